// The emulated kernels' build configuration: the *_cuda functions exist (run by the emulator).
#pragma once

#define KVSERVE_HAS_CUDA 1
