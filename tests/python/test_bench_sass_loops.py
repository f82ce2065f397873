"""bench/sass_loops.py's reading of cuobjdump's SASS (which loops are the tensor-core loops, whether
they are the raw or the transformed-scores variant, the kernel names it prints, what a kernel does
before it waits for the kernel before it) on made-up listings; then, in a build with CUDA kernels,
the attention kernel's own loops held to their instruction budget, and every kernel's wait first."""

import pytest

import kvserve._C
from bench_script import load_bench_script

sass_loops = load_bench_script("sass_loops")

MANGLED = ("_ZN7kvserve3gpu20attention_mma_kernelINS0_8BFloat16ENS0_7MmaTileIS2_Li128ELi16ES2_Li4EEEEEv"
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
		Function : _ZN7kvserve3gpu19silu_and_mul_kernelIfEEvNS_16SiluAndMulParamsE
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
    silu = functions[("sm_90a", "_ZN7kvserve3gpu19silu_and_mul_kernelIfEEvNS_16SiluAndMulParamsE")]
    assert sass_loops.tensor_loops(silu) == []  # a loop without tensor-core instructions


def test_a_call_to_the_instruction_after_the_loop_is_sm_80s_way_out_not_a_subroutine():
    listing = f"""
	code for sm_80
		Function : {MANGLED}
        /*0000*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0010*/               @P0 CALL.REL.NOINC 0x30 ;
        /*0020*/                   BRA 0x0 ;
        /*0030*/                   BSYNC B0 ;
        /*0040*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;
        /*0050*/               @P0 CALL.REL.NOINC 0x80 ;
        /*0060*/                   CALL.REL.NOINC 0x400 ;
        /*0070*/                   BRA 0x40 ;
        /*0080*/                   EXIT ;
"""
    loops = sass_loops.tensor_loops(sass_loops.functions(listing)[("sm_80", MANGLED)])
    assert [(loop.kind, loop.size) for loop in loops] == [("raw", 3), ("transformed", 4)]


def test_predicated_instructions_count_by_their_opcode():
    assert sass_loops.opcode("@!P1 BRA 0x60") == "BRA"
    assert sass_loops.opcode("@P5 IMAD.WIDE.U32 R86, R153, R84, R86") == "IMAD"


def test_kernel_instances_get_readable_names():
    assert sass_loops.short_name(MANGLED) == "attention_mma_kernel<bf16, D128, 16 rows>"
    assert sass_loops.short_name("_ZN7kvserve3gpu19silu_and_mul_kernelIfEEvNS_16SiluAndMulParamsE") == \
        "silu_and_mul_kernel<f32>"
    anonymous = "_ZN7kvserve41_GLOBAL__N__ddabdee5_9_linear_cu_061af26013linear_kernelINS_3gpu8BFloat16EEEvNS_12LinearParamsE"
    assert sass_loops.short_name(anonymous) == "linear_kernel<bf16>"
    flagged = "_ZN7kvserve3gpu13rotary_kernelINS0_8BFloat16ELi8ELb1EEEvNS_21RotaryEmbeddingParamsENS_21ReshapeAndCacheParamsE"
    assert sass_loops.short_name(flagged) == "rotary_kernel<bf16, true>"
    fused = ("_ZN7kvserve41_GLOBAL__N__ddabdee5_9_linear_cu_061af26013linear_kernelI6__halfLNS0_8EpilogueE2EEEvNS_12"
             "LinearParamsENS_20RotaryAndCacheParamsE")
    assert sass_loops.short_name(fused) == "linear_kernel<f16, Epilogue 2>"
    codes = ("_ZN7kvserve41_GLOBAL__N__ddabdee5_9_linear_cu_061af26013linear_kernelINS_3gpu8BFloat16ENS2_11Uint4Weight"
             "IS3_EELNS0_8EpilogueE1ES3_EEvNS_12LinearParamsENS_20RotaryAndCacheParamsE")
    assert sass_loops.short_name(codes) == "linear_kernel<bf16, uint4 weight, Epilogue 1>"
    # Instances over an fp8 KV cache name it last; two-warp tiles name their warps.
    fp8_tile = MANGLED.replace("Li16ES2_Li4E", "Li16ENS0_10Float8E4M3ELi4E")
    assert sass_loops.short_name(fp8_tile) == "attention_mma_kernel<bf16, D128, 16 rows, e4m3 cache>"
    two_warps = MANGLED.replace("Li16ES2_Li4E", "Li16ES2_Li2E")
    assert sass_loops.short_name(two_warps) == "attention_mma_kernel<bf16, D128, 16 rows, 2 warps>"
    fp8_two_warps = MANGLED.replace("Li16ES2_Li4E", "Li16ENS0_10Float8E4M3ELi2E")
    assert sass_loops.short_name(fp8_two_warps) == "attention_mma_kernel<bf16, D128, 16 rows, 2 warps, e4m3 cache>"
    fp8_rotary = ("_ZN7kvserve3gpu13rotary_kernelINS0_8BFloat16ELi8ELb1ELb0ENS0_10Float8E5M2EEEv"
                  "NS_20RotaryAndCacheParamsE")
    assert sass_loops.short_name(fp8_rotary) == "rotary_kernel<bf16, true, false, e5m2 cache>"
    float_rows = "_ZN7kvserve3gpu13rotary_kernelIfLi4ELb1ELb0ENS0_10Float8E4M3EEEvNS_20RotaryAndCacheParamsE"
    assert sass_loops.short_name(float_rows) == "rotary_kernel<f32, true, false, e4m3 cache>"


@pytest.mark.skipif(not kvserve._C.has_cuda, reason="needs a kvserve build with its CUDA kernels")
@pytest.mark.skipif(not (sass_loops.find_tool("cuobjdump") and sass_loops.find_tool("nvdisasm")),
                    reason="needs cuobjdump and nvdisasm (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
def test_the_attention_loops_keep_their_instruction_budget():
    """The tensor-core attention's per-stage loops in kvserve._C's own SASS (bfloat16, head_dim 128;
    sm_90a, and sm_80 where the build has it): no local memory, a few branches on the raw-score path,
    and no more instructions than bench/README.md records plus a margin for other compilers. A branch
    per score, a division per K/V chunk, or fp8 widened element by element coming back shows here,
    without a GPU."""
    budgets = {  # (arch, kernel, mma in the loop) -> instructions of its raw-score loop
        ("sm_90a", "attention_mma_kernel<bf16, D128, 16 rows>", 32): 671,  # decode
        ("sm_90a", "attention_mma_kernel<bf16, D128, 16 rows, 2 warps>", 32): 671,  # the same code a warp
        ("sm_90a", "attention_mma_kernel<bf16, D128, 64 rows>", 128): 1152,  # prefill
        ("sm_90a", "attention_mma_kernel<bf16, D128, 16 rows, e4m3 cache>", 32): 830,  # and the stage's widening
        ("sm_80", "attention_mma_kernel<bf16, D128, 16 rows>", 32): 669,
        ("sm_80", "attention_mma_kernel<bf16, D128, 16 rows, e4m3 cache>", 32): 1172,  # no fp8 conversion instruction
    }
    rows = sass_loops.kernel_loops(kvserve._C.__file__, "BFloat16ENS0_7MmaTileIS2_Li128E")
    arches = {row.arch for row in rows}
    if "sm_90a" not in arches:
        pytest.skip("this build has no sm_90a code")
    raw = {(row.arch, row.kernel, row.loop.counts["HMMA"]): row.loop for row in rows if row.loop.kind == "raw"}
    expected = {key for key in budgets if key[0] in arches}
    assert expected <= set(raw), f"raw-score loops (no subroutine call): {sorted(raw)}"
    for key in expected:
        assert raw[key].size <= 1.25 * budgets[key], f"{key}: {raw[key].size} instructions"
    assert all(loop.counts["BRA"] <= 8 for loop in raw.values())
    assert all(row.loop.counts["LDL"] == row.loop.counts["STL"] == 0 for row in rows)


PROLOGUE = """
	code for sm_90a
		Function : good
        /*0000*/                   S2R R7, SR_TID.X ;
        /*0010*/               @P2 BRA 0x40 ;
        /*0020*/                   CCTL.E.PF2 [R12] ;
        /*0030*/               @P1 LDG.E.128.STRONG.GPU R8, desc[UR6][R12.64] ;
        /*0040*/                   ACQBULK ;
        /*0050*/                   PREEXIT ;
        /*0060*/                   LDG.E.128 R24, desc[UR6][R10.64] ;
		Function : reads_first
        /*0000*/                   LDG.E.128 R24, desc[UR6][R10.64] ;
        /*0010*/                   LDG.E.STRONG.SYS R2, desc[UR6][R10.64] ;
        /*0020*/                   STG.E.STRONG.GPU desc[UR6][R4.64], R7 ;
        /*0030*/                   ACQBULK ;
		Function : skips_the_wait
        /*0000*/               @P0 BRA 0x40 ;
        /*0010*/               @P1 EXIT ;
        /*0020*/                   ACQBULK ;
        /*0030*/                   EXIT ;
        /*0040*/                   STG.E desc[UR6][R4.64], R7 ;
		Function : never_waits
        /*0000*/                   STG.E desc[UR6][R4.64], R7 ;
"""


def test_what_a_kernel_does_before_it_waits_for_the_kernel_before():
    functions = {name: code for (_, name), code in sass_loops.functions(PROLOGUE).items()}
    # A forward branch, a prefetch hint, a load through L2 (of memory no kernel writes: compat.cuh).
    assert sass_loops.before_prior_grid(functions["good"]) == []
    assert sass_loops.before_prior_grid(functions["reads_first"]) == [
        "LDG.E.128 R24, desc[UR6][R10.64]", "LDG.E.STRONG.SYS R2, desc[UR6][R10.64]",
        "STG.E.STRONG.GPU desc[UR6][R4.64], R7"]
    assert sass_loops.before_prior_grid(functions["skips_the_wait"]) == ["@P0 BRA 0x40", "@P1 EXIT"]
    assert sass_loops.before_prior_grid(functions["never_waits"]) is None


@pytest.mark.skipif(not kvserve._C.has_cuda, reason="needs a kvserve build with its CUDA kernels")
@pytest.mark.skipif(not (sass_loops.find_tool("cuobjdump") and sass_loops.find_tool("nvdisasm")),
                    reason="needs cuobjdump and nvdisasm (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
def test_no_kernel_touches_what_the_kernel_before_writes_before_it_waits():
    """On sm_90 kvserve launches its kernels programmatically (compat.cuh): a kernel may start while
    the one before it runs, so before its wait it may only read through L2 (memory no kernel
    writes) and prefetch; any other read or write of global memory, or an exit, would race with
    that kernel. Checked on the machine code, as only a GPU could show it otherwise."""
    prologues = sass_loops.prologues(kvserve._C.__file__, "sm_90a")
    if not prologues:
        pytest.skip("this build has no sm_90a code")
    kernels = {sass_loops.short_name(name).split("<")[0] for name in prologues}
    assert {"linear_kernel", "attention_mma_kernel", "rms_norm_kernel", "rotary_kernel", "silu_and_mul_kernel",
            "argmax_kernel", "reshape_and_cache_kernel"} <= kernels
    assert {sass_loops.short_name(name): bad for name, bad in prologues.items() if bad != []} == {}
