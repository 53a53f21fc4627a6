"""The ahead-of-time sm_90a check: every registered Triton kernel compiles for the H100, fits its shared
memory, spills nothing and uses wgmma where it multiplies matrices; and the check itself can fail. All of it
runs in a subprocess without TRITON_INTERPRET, which would replace the kernels.

`make test` compiles each kernel's default plan once (a minute or two on a cold Triton cache); the tests
marked ``aot_sweep`` compile every config and variant and hold the instruction budgets (`make aot-check`,
which CI runs after `make test`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from internvideo_fast.ops.framework.aot import default_variant
from internvideo_fast.ops.framework.kernel_registry import triton_kernels

TESTS = Path(__file__).parent
# The full sweep compiles a few hundred kernels on a cold cache (10+ minutes on two cores); its subprocess
# has its own limit, so pytest's default 900 s must not cut it.
pytestmark = pytest.mark.timeout(1800)
sweep = pytest.mark.aot_sweep


def _run_without_interpreter(*command: str):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=1700
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def default_reports():
    return _run_without_interpreter("-m", "internvideo_fast.ops.framework.aot", "--json", "--default-only")


@pytest.fixture(scope="module")
def registered_reports():
    return _run_without_interpreter("-m", "internvideo_fast.ops.framework.aot", "--json")


@pytest.fixture(scope="module")
def subject_reports():
    return _run_without_interpreter(str(TESTS / "aot_subjects.py"))


def test_every_kernel_fits_the_h100_at_its_default_plan(default_reports):
    expected = {
        (spec.name, config.label() + (",aligned16" if aligned else ""))
        for spec, config, aligned in map(default_variant, triton_kernels())
    }
    assert {(r["kernel"], r["config"]) for r in default_reports} == expected
    for report in default_reports:
        assert report["problems"] == [], report
        assert report["registers"] > 0 and report["shared_bytes"] is not None


def test_the_default_plan_is_the_first_config_in_its_launched_form():
    specs = {spec.name: spec for spec in triton_kernels()}
    for name, aligned in (("tube_mask", False), ("linear_act_fwd", True), ("linear_act_bwd", True),
                          ("cross_attention_fwd_tma", True)):
        spec, config, compiled_aligned = default_variant(specs[name])
        assert config == specs[name].configs[0] and compiled_aligned == aligned, name


@sweep
def test_every_registered_config_fits_the_h100(registered_reports):
    # Every config unaligned, except aligned-only ones; matmul, aligned-only and also-aligned configs
    # 16-aligned too.
    expected = {
        (spec.name, config.label()) for spec in triton_kernels() if not spec.aligned_only for config in spec.configs
    }
    expected |= {
        (spec.name, config.label() + ",aligned16")
        for spec in triton_kernels() if spec.multiplies_matrices or spec.aligned_only or spec.also_aligned
        for config in spec.configs
    }
    expected |= {  # each kernel once with its integer arguments equal to 1 (launched as constants)
        (spec.name, spec.configs[0].label() + (",aligned16" if spec.aligned_only else "") + ",ints=1")
        for spec in triton_kernels() if any(kind in ("i32", "i64") for kind in spec.signature.values())
    }
    assert any(spec.aligned_only for spec in triton_kernels())
    assert {(r["kernel"], r["config"]) for r in registered_reports} == expected
    for report in registered_reports:
        assert report["problems"] == [], report
        assert report["registers"] > 0 and report["shared_bytes"] is not None


@sweep
@pytest.mark.parametrize(
    "kernel", ["dropout_add_layer_norm_bwd", "dropout_add_layer_norm_fwd_loop", "linear_act_bwd"]
)
def test_load_stages_pipeline_the_row_loops(registered_reports, kernel):
    """Aligned (as the ViT widths launch), LOAD_STAGES > 1 puts the next rows' loads in shared memory
    (cp.async): more shared memory than the same launch without stages. Triton pipelines only what it can
    load asynchronously, so this fails if a Triton version stops doing it for these loops."""
    shared = {r["config"]: r["shared_bytes"] for r in registered_reports if r["kernel"] == kernel}
    pairs = [(label, label.replace("LOAD_STAGES=3", "LOAD_STAGES=1")) for label in shared
             if "LOAD_STAGES=3" in label and label.endswith(",aligned16")]
    pairs = [(staged, unstaged) for staged, unstaged in pairs if unstaged in shared]
    assert pairs
    for staged, unstaged in pairs:
        assert shared[staged] > shared[unstaged], (staged, shared[staged], shared[unstaged])


# SASS instructions per row and thread of the LayerNorm row loops as the ViT widths launch them (BLOCK_D
# 1024, 4 warps, 3 load stages, every feature on, 16-aligned): 428 (backward) and 367 (forward) with Triton
# 3.8, 427 / 368 with 3.6; without dropout the backward's is 312. On an H100 these loops issue about half as
# many instructions as their time allows (bench/results/NOTES.md), so the count is part of their speed.
LAYER_NORM_LOOP_BUDGETS = {"dropout_add_layer_norm_bwd": 440, "dropout_add_layer_norm_fwd_loop": 380}


@sweep
@pytest.mark.parametrize("kernel", sorted(LAYER_NORM_LOOP_BUDGETS))
def test_layer_norm_row_loops_keep_their_instruction_budget(registered_reports, kernel):
    launched = {"BLOCK_D=1024", "LOAD_STAGES=3", "HAS_DROPOUT=True", "D_MULTIPLE_OF_8=True", "w4",
                "aligned16"}
    (report,) = [r for r in registered_reports
                 if r["kernel"] == kernel and launched <= set(r["config"].split(","))]
    (row_loop,) = report["loop_instructions"]
    assert 100 < row_loop <= LAYER_NORM_LOOP_BUDGETS[kernel], report["config"]


# SASS instructions of the MLP's elementwise passes as ViT widths launch them (16-aligned), Triton 3.8: the
# forward's activation pass per thread (8 elements) and the backward's row loop per iteration and thread
# (8 x 256 tile at 4 warps: 16 elements). These passes are issue-bound on an H100 (46-48% of copy bandwidth
# with dropout, bench/results/NOTES.md), so the count is part of their speed.
MLP_PASS_BUDGETS = {
    ("linear_act_activation_dropout", "BLOCK=2048,ACTIVATION=gelu,HAS_DROPOUT=False"): 200,  # 184
    ("linear_act_activation_dropout", "BLOCK=2048,ACTIVATION=quick_gelu,HAS_DROPOUT=False"): 140,  # 128
    ("linear_act_activation_dropout", "BLOCK=2048,ACTIVATION=gelu,HAS_DROPOUT=True"): 340,  # 312
    ("linear_act_bwd", "BLOCK_M=8,LOAD_STAGES=3,ACTIVATION=gelu,HAS_DROPOUT=False"): 460,  # 429
    ("linear_act_bwd",
     "BLOCK_M=8,LOAD_STAGES=3,ACTIVATION=gelu,HAS_DROPOUT=True,N_MULTIPLE_OF_8=True"): 800,  # 746
}


@sweep
@pytest.mark.parametrize("kernel, features", sorted(MLP_PASS_BUDGETS), ids=lambda v: v.replace(",", " "))
def test_mlp_elementwise_passes_keep_their_instruction_budget(registered_reports, kernel, features):
    launched = set(features.split(",")) | {"aligned16"}
    reports = [r for r in registered_reports
               if r["kernel"] == kernel and launched <= set(r["config"].split(","))]
    assert reports, features
    for report in reports:
        count = report["loop_instructions"][0] if report["loop_instructions"] else report["instructions"]
        assert 30 < count <= MLP_PASS_BUDGETS[kernel, features], report["config"]


def test_loop_instruction_counts_reads_backward_branches():
    """A loop is a branch back to an earlier address; forward branches are not loops."""
    from internvideo_fast.ops.framework.aot import loop_instruction_counts

    sass = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x00000a0000017a02 */
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;                /* 0x0000000102027810 */
        /*0020*/                   ISETP.GE.AND P0, PT, R2, 0x8, PT ;     /* 0x000000080200780c */
        /*0030*/              @!P0 BRA 0x10 ;                             /* 0xfffffffc0000a947 */
        /*0040*/                   BRA 0x60 ;                             /* 0x0000000000047947 */
        /*0050*/                   NOP ;                                  /* 0x0000000000007918 */
        /*0060*/                   EXIT ;                                 /* 0x000000000000794d */
    """
    assert loop_instruction_counts(sass) == [3]


def test_every_op_module_registers_its_kernels():
    assert {"tube_mask", "dropout_add_layer_norm_fwd", "dropout_add_layer_norm_bwd"} <= {spec.name for spec in triton_kernels()}


def test_an_integer_argument_used_as_a_tensor_fails_where_it_is_one(subject_reports):
    assert subject_reports["int_as_tensor"]["problems"] == []
    (problem,) = subject_reports["int_as_tensor_ints_one"]["problems"]
    assert problem.startswith("does not compile"), problem


def test_a_good_matmul_config_passes_with_wgmma(subject_reports):
    report = subject_reports["good_matmul"]
    assert report["has_wgmma"] and report["problems"] == [], report


def test_an_oversized_config_is_flagged_for_spills(subject_reports):
    report = subject_reports["spilling_matmul"]
    assert report["spill_stores"] > 0 and any("spills" in p for p in report["problems"]), report


def test_an_oversized_config_is_flagged_for_shared_memory(subject_reports):
    report = subject_reports["oversized_smem_matmul"]
    assert any("shared memory" in p for p in report["problems"]), report


def test_a_matmul_kernel_without_wgmma_is_flagged(subject_reports):
    assert subject_reports["claims_matmul"]["problems"] == ["multiplies matrices without wgmma"]
