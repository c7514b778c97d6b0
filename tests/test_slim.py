"""export/slim.py: a slimmer synthesis keeps every symbol of the model it came from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import codec  # noqa: E402
from codec.session import Bundle  # noqa: E402
from export import bundle as export_bundle  # noqa: E402
from export import slim  # noqa: E402
from export.model import ModelConfig, Onic, Synthesis  # noqa: E402
from export.train import load_model, save_weights  # noqa: E402
from tests.conftest import image_folder, random_image  # noqa: E402


def test_pruning_nothing_keeps_the_synthesis():
    torch.manual_seed(0)
    g_s = Synthesis(8, 12).eval()
    keep = [torch.arange(8)] * 3
    x = torch.randn(1, 12, 4, 5)
    with torch.no_grad():
        assert torch.equal(slim.pruned(g_s, keep, 8, 12)(x), g_s(x))


def test_pruning_keeps_the_chosen_channels():
    """The pruned synthesis computes the original one with the other channels' signals removed."""
    torch.manual_seed(0)
    g_s = Synthesis(8, 12).eval()
    keep = [torch.tensor([0, 2, 3, 7]), torch.arange(8), torch.tensor([1, 5])]
    student = slim.pruned(g_s, keep, 8, 12)
    assert [student[i].out_channels for i in (0, 2, 4)] == [4, 8, 2]
    mask = [torch.zeros(8).index_fill_(0, k, 1.0) for k in keep]
    x = torch.randn(1, 12, 4, 5)
    with torch.no_grad():
        h = x
        for i, layer in enumerate(g_s):
            h = layer(h)
            if isinstance(layer, torch.nn.ConvTranspose2d) and i < 6:
                h = h * mask[i // 2][None, :, None, None]  # zeroed channels also leave the GDN's sums
        torch.testing.assert_close(student(x), h, atol=1e-6, rtol=1e-5)


def test_widening_keeps_the_students_output():
    """New channels start unread (zero weights after them, zero γ into the old channels' GDN) but
    with live weights into them, so training can use them."""
    torch.manual_seed(0)
    student = Synthesis(8, 12, (6, 4, 4)).eval()
    with torch.no_grad():
        for i in (1, 3, 5):  # a trained GDN's channels interact
            student[i].gamma.uniform_(0.05, 0.5)
    wide = slim.widened(student, (8, 6, 5), 8, 12)
    assert [wide[i].out_channels for i in (0, 2, 4)] == [8, 6, 5]
    x = torch.randn(2, 12, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), student(x), atol=1e-6, rtol=1e-5)
        assert wide[0].weight[:, 6:].abs().sum() > 0 and wide[2].weight[6:].abs().sum() == 0


def test_widths_round_trip_and_are_checked():
    cfg = ModelConfig(N=8, M=12, synthesis=(8, 6, 4))
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert "synthesis" not in ModelConfig(N=8, M=12).to_dict()  # N-wide manifests stay as they were
    with pytest.raises(ValueError, match="synthesis widths"):
        ModelConfig(N=8, M=12, synthesis=(8, 6))


def _sha(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.suffix == ".onnx"}


def test_a_slim_bundle_decodes_the_teachers_files_symbol_for_symbol(tmp_path):
    """Distil a few steps, export both, and decode a file of the teacher's bundle with the student's."""
    torch.manual_seed(0)
    teacher = Onic(ModelConfig(N=8, M=12, slices=(4, 4, 4))).eval()
    save_weights(tmp_path / "teacher.pt", teacher, step=7)
    data = image_folder(tmp_path / "data", 2)
    weights = slim.distill(slim.SlimConfig(teacher=str(tmp_path / "teacher.pt"), widths="6,6,4", data=str(data),
                                           out=str(tmp_path / "slim"), crop=64, batch_size=2, max_steps=3,
                                           prune_crops=2, log_every=1, save_every=2))
    student, ck = load_model(weights)
    assert student.cfg.synthesis == (6, 6, 4) and ck["step"] == 7 and ck["synthesis_steps"] == 3
    for name, p in teacher.state_dict().items():
        if not name.startswith("g_s."):
            assert torch.equal(student.state_dict()[name], p), name

    old = export_bundle.export_bundle(tmp_path / "teacher.pt", tmp_path / "old", name="tiny")
    new = export_bundle.export_bundle(weights, tmp_path / "new", name="tiny", supersedes=tmp_path / "old")
    assert new["also_decodes"] == [old["model_id"]] and new["config"]["synthesis"] == [6, 6, 4]
    before, after = _sha(tmp_path / "old"), _sha(tmp_path / "new")
    assert {n for n in before if before[n] != after[n]} == {"decoder.onnx", "decoder_tiles.onnx",
                                                             "synthesis_grad.onnx"}  # g_s alone
    assert json.loads((tmp_path / "new" / "manifest.json").read_text())["files"]["tables.npz"] == \
        old["files"]["tables.npz"]

    image = random_image(70, 45)
    file = codec.compress(image, quality=60, bundle=Bundle(tmp_path / "old"))
    _, z_old, y_old = codec.api.decode_latents(file, Bundle(tmp_path / "old"))
    _, z_new, y_new = codec.api.decode_latents(file, Bundle(tmp_path / "new"))
    assert np.array_equal(z_old, z_new) and np.array_equal(y_old, y_new)
    decoded = codec.decompress(file, bundle=Bundle(tmp_path / "new"))
    assert decoded.size == image.size


def test_distillation_resumes_and_refuses_another_teacher(tmp_path):
    torch.manual_seed(0)
    teacher = Onic(ModelConfig(N=8, M=12)).eval()
    save_weights(tmp_path / "teacher.pt", teacher, step=3)
    data = image_folder(tmp_path / "data", 2)
    cfg = slim.SlimConfig(teacher=str(tmp_path / "teacher.pt"), widths="6,4,4", data=str(data),
                          out=str(tmp_path / "a"), crop=64, batch_size=2, max_steps=2, prune_crops=2)
    first = slim.distill(cfg)
    again = slim.distill(slim.SlimConfig(**{**cfg.__dict__, "resume": str(first), "out": str(tmp_path / "b"),
                                           "widths": "8,8,8"}))
    model, ck = load_model(again)
    assert model.cfg.synthesis == (6, 4, 4) and ck["synthesis_steps"] == 4 and ck["step"] == 3
    grown = slim.distill(slim.SlimConfig(**{**cfg.__dict__, "resume": str(again), "out": str(tmp_path / "c"),
                                            "grow": "6,6,4"}))
    model, ck = load_model(grown)
    assert model.cfg.synthesis == (6, 6, 4) and ck["synthesis_steps"] == 6
    with pytest.raises(SystemExit, match="at least"):
        slim.distill(slim.SlimConfig(**{**cfg.__dict__, "resume": str(again), "grow": "6,2,4"}))
    with pytest.raises(SystemExit, match="give --resume"):
        slim.distill(slim.SlimConfig(**{**cfg.__dict__, "grow": "6,6,4"}))
    torch.manual_seed(1)
    save_weights(tmp_path / "other.pt", Onic(ModelConfig(N=8, M=12)), step=3)
    with pytest.raises(SystemExit, match="not distilled from"):
        slim.distill(slim.SlimConfig(**{**cfg.__dict__, "resume": str(first), "teacher": str(tmp_path / "other.pt")}))


def test_the_analysis_pool_keeps_each_crop_with_its_analysis():
    """Pool entries are crops and the teacher's g_a of exactly those crops, before and after refreshes;
    distillation runs on it and saves as without it."""
    import random

    torch.manual_seed(0)
    teacher = Onic(ModelConfig(N=8, M=12, slices=(4, 4, 4))).eval()
    rng = random.Random(0)
    images = [torch.from_numpy(np.asarray(random_image(80, 72, seed=i))) for i in range(2)]
    pool = slim.AnalysisPool(teacher, images, size=5, crop=32, batch=2, refresh=1.5, rng=rng)
    for _ in range(4):  # 1.5 new crops a step: refills of 2 at steps 2, 3 and 4
        x, y = pool.batch_of(3)
        with torch.no_grad():
            torch.testing.assert_close(y, teacher.g_a(x))
            torch.testing.assert_close(pool.y, teacher.g_a(pool.x.float() / 255))
    assert x.shape == (3, 3, 32, 32) and x.min() >= 0 and x.max() <= 1


def test_distilling_from_a_pool(tmp_path):
    torch.manual_seed(0)
    save_weights(tmp_path / "teacher.pt", Onic(ModelConfig(N=8, M=12, slices=(4, 4, 4))).eval(), step=7)
    weights = slim.distill(slim.SlimConfig(teacher=str(tmp_path / "teacher.pt"), widths="6,6,4",
                                           data=str(image_folder(tmp_path / "data", 2)), out=str(tmp_path / "slim"),
                                           crop=64, batch_size=2, max_steps=3, prune_crops=2, log_every=1, pool=3))
    student, ck = load_model(weights)
    assert student.cfg.synthesis == (6, 6, 4) and ck["synthesis_steps"] == 3


def test_the_log_loss_weighs_every_rung_alike(tmp_path):
    """--loss log: halving one crop's MSE lowers the loss by the same amount whatever its λ (rd's does
    not), and a student trains with it; an unknown loss is refused before the photos load."""
    lam = torch.tensor([0.001, 0.3])
    mse = torch.tensor([0.01, 0.0001])
    for i in range(2):
        halved = mse.clone()
        halved[i] /= 2
        gain = slim.distillation_loss("log", mse, lam) - slim.distillation_loss("log", halved, lam)
        torch.testing.assert_close(gain, torch.tensor(np.log(2) / 2, dtype=torch.float32))
    torch.testing.assert_close(slim.distillation_loss("rd", mse, lam), (lam * 255**2 * mse).mean())
    torch.manual_seed(0)
    save_weights(tmp_path / "teacher.pt", Onic(ModelConfig(N=8, M=12)).eval(), step=7)
    cfg = slim.SlimConfig(teacher=str(tmp_path / "teacher.pt"), widths="6,6,4", data=str(image_folder(
        tmp_path / "data", 2)), out=str(tmp_path / "slim"), crop=64, batch_size=2, max_steps=3, prune_crops=2,
        log_every=1, pool=3, loss="log")
    untrained, _ = load_model(slim.distill(slim.SlimConfig(**{**cfg.__dict__, "max_steps": 0})))
    trained, ck = load_model(slim.distill(cfg))
    rd, _ = load_model(slim.distill(slim.SlimConfig(**{**cfg.__dict__, "loss": "rd", "out": str(tmp_path / "rd")})))
    assert ck["synthesis_steps"] == 3

    def moved(a: Onic, b: Onic) -> bool:
        return any(not torch.equal(u, v) for u, v in zip(a.g_s.parameters(), b.g_s.parameters(), strict=True))

    assert moved(untrained, trained) and moved(rd, trained)  # the same crops and draws: only the loss differs
    with pytest.raises(SystemExit, match="--loss is one of rd, log"):
        slim.distill(slim.SlimConfig(**{**cfg.__dict__, "loss": "l1", "data": str(tmp_path / "missing")}))


def test_the_student_alone_resumes_and_names_its_teacher(tmp_path):
    """--synthesis_out keeps the student alone (fp16); --resume continues from it with its teacher only."""
    torch.manual_seed(0)
    for name, seed in (("teacher", 0), ("other", 1)):
        torch.manual_seed(seed)
        save_weights(tmp_path / f"{name}.pt", Onic(ModelConfig(N=8, M=12)).eval(), step=7, half=True)
    data = str(image_folder(tmp_path / "data", 2))

    def run(teacher: str, out: str, steps: int, **kw) -> Path:
        return slim.distill(slim.SlimConfig(teacher=str(tmp_path / teacher), widths="6,6,4", data=data,
                                            out=str(tmp_path / out), crop=64, batch_size=2, max_steps=steps,
                                            prune_crops=2, log_every=1, **kw))

    alone = tmp_path / "student.pt"
    first = run("teacher.pt", "a", 2, synthesis_out=str(alone))
    kept = torch.load(alone, weights_only=True)
    assert kept["widths"] == [6, 6, 4] and kept["synthesis_steps"] == 2
    assert all(v.dtype == torch.float16 for v in kept["synthesis"].values())
    assert sum(v.numel() for v in kept["synthesis"].values()) == sum(
        p.numel() for p in load_model(first)[0].g_s.parameters())
    again, ck = load_model(run("teacher.pt", "b", 0, resume=str(alone)))
    assert ck["synthesis_steps"] == 2 and again.cfg.synthesis == (6, 6, 4)
    for k, v in load_model(first)[0].g_s.state_dict().items():
        torch.testing.assert_close(again.g_s.state_dict()[k], v.half().float())
    assert load_model(run("teacher.pt", "c", 1, resume=str(alone)))[1]["synthesis_steps"] == 3
    with pytest.raises(SystemExit, match="not distilled from"):
        run("other.pt", "d", 1, resume=str(alone))
