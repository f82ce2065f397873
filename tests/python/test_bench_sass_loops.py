"""bench/sass_loops.py's reading of cuobjdump's SASS: which loops are the tensor-core loops, whether
they are the raw or the transformed-scores variant, and the kernel names it prints (on a made-up
listing: the tools themselves need a CUDA build)."""

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "sass_loops", Path(__file__).resolve().parents[2] / "bench" / "sass_loops.py")
sass_loops = sys.modules["sass_loops"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sass_loops)

MANGLED = ("_ZN7kvserve3gpu20attention_mma_kernelINS0_8BFloat16ENS0_7MmaTileIS2_Li128ELi16EEEEEv"
           "NS_20PagedAttentionParamsENS0_13SplitPartialsE")

LISTING = f"""
	code for sm_90a
		Function : {MANGLED}
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   IMAD R2, R3, R4, RZ ;
        /*0020*/                   LDG.E R5, desc[UR8][R6.64] ;
        /*0030*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0040*/                   MUFU.EX2 R9, R9 ;
        /*0050*/               @P0 BRA 0x20 ;
        /*0060*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0070*/                   CALL.REL.NOINC 0x400 ;
        /*0080*/              @!P1 BRA 0x60 ;
        /*0090*/                   BRA 0x0 ;
        /*00a0*/                   EXIT ;
		Function : _ZN7kvserve3gpu14silu_and_mul_kernelIfEEvNS_16SiluAndMulParamsE
        /*0000*/                   FMUL R1, R2, R3 ;
        /*0010*/               @P0 BRA 0x0 ;
"""


def test_finds_the_innermost_tensor_core_loops_and_their_kind():
    functions = sass_loops.functions(LISTING)
    attention = functions[("sm_90a", MANGLED)]
    loops = sass_loops.tensor_loops(attention)
    # 0x20..0x50 and 0x60..0x80 hold HMMA; the outer 0x00..0x90 holds both and is not innermost.
    assert [(loop.kind, loop.size) for loop in loops] == [("raw", 4), ("transformed", 3)]
    assert loops[0].counts["HMMA"] == 1 and loops[0].counts["MUFU"] == 1 and loops[0].counts["BRA"] == 1
    silu = functions[("sm_90a", "_ZN7kvserve3gpu14silu_and_mul_kernelIfEEvNS_16SiluAndMulParamsE")]
    assert sass_loops.tensor_loops(silu) == []  # a loop without tensor-core instructions


def test_predicated_instructions_count_by_their_opcode():
    assert sass_loops.opcode("@!P1 BRA 0x60") == "BRA"
    assert sass_loops.opcode("@P5 IMAD.WIDE.U32 R86, R153, R84, R86") == "IMAD"


def test_kernel_instances_get_readable_names():
    assert sass_loops.short_name(MANGLED) == "attention_mma_kernel<bf16, D128, 16 rows>"
    assert sass_loops.short_name("_ZN7kvserve3gpu14silu_and_mul_kernelIfEEvNS_16SiluAndMulParamsE") == \
        "silu_and_mul_kernel<f32>"
