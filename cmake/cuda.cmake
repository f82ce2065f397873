# Decides whether the CUDA kernels are built, and how.
#
# AUTO turns CUDA on when nvcc is found, so `pip install .` on a GPU machine gets the kernels. The CUDA
# runtime is linked statically: it loads the driver (libcuda) only on the first CUDA call, so a CUDA
# build still imports and runs on a machine with no GPU and no driver.
set(KVSERVE_WITH_CUDA OFF)
if(KVSERVE_CUDA STREQUAL "AUTO")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(KVSERVE_WITH_CUDA ON)
  endif()
elseif(KVSERVE_CUDA)
  set(KVSERVE_WITH_CUDA ON)
endif()

if(KVSERVE_WITH_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    # Ampere (A100) and Hopper (H100, with wgmma); PTX for sm_90 lets newer GPUs JIT the kernels.
    set(CMAKE_CUDA_ARCHITECTURES "80-real;90a-real;90-virtual")
  endif()
  set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  find_package(CUDAToolkit REQUIRED)
  message(STATUS "kvserve: CUDA kernels ON (${CMAKE_CUDA_COMPILER_VERSION}, archs ${CMAKE_CUDA_ARCHITECTURES})")
else()
  message(STATUS "kvserve: CUDA kernels OFF (KVSERVE_CUDA=${KVSERVE_CUDA})")
endif()
