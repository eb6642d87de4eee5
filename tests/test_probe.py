"""The Probe (tikmix/mixer.py): what a mixer may use is declared there, the trainer's probe provides every member,
a target-loss pass can be charged to the mixer instead of to evaluation, and no mixer reaches past the interface."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from tests.conftest import REPO
from tests.probes import StubProbe
from tikmix.mixer import MixtureSample, Probe, register
from tikmix.mixer_helpers import take_tokens
from tikmix.run import run
from tikmix.static_mixers import Stratified
from tikmix.trainer import TrainerProbe

SEEN: dict = {}


@register("test_probe_members")
class ProbeMembers(Stratified):
    """Stratified mixing whose one probe exercises every member and records what it got."""

    def probe_steps(self) -> list[int]:
        return [2]

    def on_probe(self, probe: Probe) -> None:
        SEEN["type"] = type(probe)
        SEEN["missing"] = [a for a in Probe.__annotations__ if not hasattr(probe, a)]
        with probe.autocast():
            SEEN["eval"] = probe.target_losses()
        SEEN["charged"] = probe.target_losses(charge_as="test_probe")
        SEEN["cut"] = probe.target_losses(n_tokens=probe.seq_len, charge_as="test_probe")
        SEEN["cut_inputs"] = sum(
            b["input_ids"].numel() for bs in probe.targets.values() for b in take_tokens(bs, probe.seq_len)
        )
        SEEN["flops_per_token"] = probe.flops_per_token
        SEEN["mixture"] = probe.mixture_batches(
            np.full(len(probe.domains), 1.0 / len(probe.domains)), 4 * probe.seq_len
        )
        SEEN["domain"] = list(probe.domain_batches(probe.domains[0], probe.seq_len))
        SEEN["val"] = probe.val_losses()


def test_the_trainer_probe_provides_every_member_and_charges_target_passes_as_asked(make_cfg, tmp_path):
    SEEN.clear()
    cfg = make_cfg("trainer.save_final_model=false", "trainer.eval_every=0", run_dir=tmp_path / "probe")
    cfg.mixer.name = "test_probe_members"
    res = run(cfg, quiet=True)
    assert SEEN["type"] is TrainerProbe and SEEN["missing"] == []
    ev, charged, cut = SEEN["eval"], SEEN["charged"], SEEN["cut"]
    # the same pass whoever pays for it: the same losses and FLOPs, booked to the mixer only when asked
    assert ev and dict(charged) == dict(ev) and charged.flops == ev.flops > 0
    assert cut.flops == SEEN["flops_per_token"] / 3.0 * SEEN["cut_inputs"] < charged.flops
    assert res["compute"]["mixer/test_probe"] == charged.flops + cut.flops
    assert res["compute"]["mixer_total"] == charged.flops + cut.flops
    assert isinstance(SEEN["mixture"], MixtureSample) and SEEN["mixture"].counts.sum() == 4
    assert SEEN["domain"] and set(SEEN["val"]) == set(res["domains"])


def test_a_probe_missing_a_method_cannot_be_built():
    class Incomplete(Probe):
        def autocast(self):
            return contextlib.nullcontext()

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    with pytest.raises(AssertionError, match="does not provide it"):
        StubProbe().target_losses()


def test_no_mixer_reaches_past_the_probe():
    """Every member a mixer uses is declared on Probe: none looks one up by name on the off chance."""
    offenders = [
        f"{p.relative_to(REPO)}:{i}"
        for d in ("tikmix", "baselines")
        for p in sorted((REPO / d).rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "getattr(probe" in line.replace(" ", "")
    ]
    assert offenders == []
