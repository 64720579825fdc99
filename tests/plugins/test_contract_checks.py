""":mod:`bctbench.testing` catches each kind of contract violation, with a message naming the method and rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bctbench import CompatibilityMethod, MethodSetup, build_optimizer, losses
from bctbench.method import Encoder
from bctbench.testing import RULES, check_method


class Good(CompatibilityMethod):
    name = "contract_good"
    paper = "a paper"
    reference_code = "a repository"
    needs_old_forward = True

    def __init__(self, setup: MethodSetup, *, weight: float = 1.0, kind: str = "l2") -> None:
        super().__init__(setup)
        self.weight = weight
        self.kind = kind

    def compatibility_loss(self, batch, new, old):
        term = losses.point_to_point_loss(
            new.embedding_normed, old.embedding_normed, batch["labels"], kind="l2"
        )
        return {"pull": self.weight * term}

    @classmethod
    def search_space(cls):
        return {"weight": [0.5, 1.0]}


def _broken(exc_info) -> list[str]:
    return str(exc_info.value).splitlines()


def test_a_good_method_passes_every_rule(tmp_path):
    check_method(Good, workdir=tmp_path)
    assert (tmp_path / "method.ckpt").is_file()


def test_static_rules_report_every_violation_on_its_own_line():
    class Static(Good):
        name = "contract_static"
        paper = ""

        def __init__(self, setup, *, weight: float = 1.0, **extra):
            super().__init__(setup)

        @classmethod
        def search_space(cls):
            return {"lr": [0.1], "weight": ["big"]}

    with pytest.raises(AssertionError) as info:
        check_method(Static, rules=["metadata", "hyperparameters", "search_space"])
    lines = _broken(info)
    assert len(lines) == 3
    assert lines[0] == "method 'contract_static' breaks rule 'metadata': `paper` must be a non-empty string"
    assert (
        lines[1]
        == "method 'contract_static' breaks rule 'hyperparameters': no **extra: every hyperparameter must be named"
    )
    assert lines[2].startswith("method 'contract_static' breaks rule 'search_space': search_space() key 'lr'")


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        ("weight: float", "hyperparameter 'weight' needs a reference default"),
        ("weight=1.0", "hyperparameter 'weight' has no type annotation"),
        ("weight: int = 0.5", "default 0.5 of 'weight' does not fit its annotation (expected int)"),
        ("weight: NoSuchType = 1.0", "the annotation 'NoSuchType' of 'weight' does not resolve"),
        ("weight: Path = Path('x')", "is not a plain value (checkpoints load with weights_only=True)"),
    ],
)
def test_hyperparameter_rules(signature, message):
    namespace: dict = {"Good": Good, "Path": Path}
    exec(  # noqa: S102 - builds a class with the signature under test
        f"class Bad(Good):\n    name = 'contract_bad'\n    def __init__(self, setup, *, {signature}):\n"
        "        super().__init__(setup)\n",
        namespace,
    )
    with pytest.raises(AssertionError, match=r"breaks rule 'hyperparameters'") as info:
        check_method(namespace["Bad"], rules=["hyperparameters"])
    assert message in str(info.value)


def test_a_method_that_changes_the_old_model_is_caught(tmp_path):
    class Drifts(Good):
        name = "contract_drifts"

        def compatibility_loss(self, batch, new, old):
            with torch.no_grad():
                next(self.old.parameters()).add_(0.01)
            return super().compatibility_loss(batch, new, old)

    with pytest.raises(AssertionError) as info:
        check_method(Drifts, rules=["training"], workdir=tmp_path)
    (line,) = _broken(info)
    assert line.startswith(
        "method 'contract_drifts' breaks rule 'training': the frozen old model changed in training: "
    )


def test_old_parameters_in_the_optimiser_are_caught(tmp_path):
    class Leaks(Good):
        name = "contract_leaks"

        def configure_optimizers(self):
            return build_optimizer(self.parameters(), self.method_setup.optimizer, 1)

    with pytest.raises(AssertionError, match="parameters of the frozen old model are in an optimiser"):
        check_method(Leaks, rules=["training"], workdir=tmp_path)


def test_checkpoints_must_load_with_weights_only(tmp_path):
    class Pickles(Good):
        name = "contract_pickles"

        def on_save_checkpoint(self, checkpoint):
            checkpoint["extra"] = Path("not a plain value")

    with pytest.raises(
        AssertionError,
        match=r"breaks rule .checkpoint.: the checkpoint does not load with weights_only=True \(UnpicklingError: Unsupported global: GLOBAL pathlib\.\w*Path",
    ):
        check_method(Pickles, rules=["checkpoint"], workdir=tmp_path)


def test_encoders_must_give_unit_rows(tmp_path):
    class Raw(Good):
        name = "contract_raw"

        def encoders(self):
            class Unnormalised(Encoder):
                def forward(self, images):
                    return 2 * super().forward(images)

            out = super().encoders()
            out["new"] = Unnormalised(self.new.embedder, "raw")
            return out

    with pytest.raises(AssertionError, match="breaks rule 'encoders': encoder 'new' rows are not unit-norm"):
        check_method(Raw, rules=["encoders"], workdir=tmp_path)


def test_unknown_rules_and_unknown_methods():
    with pytest.raises(ValueError, match="unknown rules"):
        check_method(Good, rules=["nosuch"])
    with pytest.raises(AssertionError, match="cannot be loaded: unknown method 'contract_nosuch'"):
        check_method("contract_nosuch")
    assert RULES[0] == "metadata"
