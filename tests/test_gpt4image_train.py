"""GPT4Image training pieces: heads, the classifier's loss, export without the head, the key join of the
embeddings, bad input as one-line errors (exit 2) before any training, and a short train.py run."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

import train
from minigpt4.common.config import Config, ConfigError
from minigpt4.gpt4image import losses
from minigpt4.gpt4image.builder import DescribedFolderBuilder
from minigpt4.gpt4image.data import derangement
from minigpt4.gpt4image.heads import build_head, resolve_head_type
from minigpt4.gpt4image.model import BatchTooSmall, GPT4ImageClassifier, topk_correct
from minigpt4.gpt4image.weights import export_classifier
from minigpt4.models.checkpoint import save_trainable
from tests.gpt4image_fixtures import key_vector, make_folder, train_config, write_embeddings

SMALL_CNN = {"channels": [8, 16, 16, 16], "stem_width": 8}


def _model(lam=0.3, **kw):
    torch.manual_seed(0)
    return GPT4ImageClassifier("resnet10t", 3, text_dim=16, lam=lam, backbone_kwargs=SMALL_CNN, **kw)


# --------------------------------------------------------------------------- heads and model
BN_HEAD = [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU, torch.nn.Linear]


@pytest.mark.parametrize("kind,layers", [("bn", BN_HEAD), ("mlp", [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear])])
def test_head_layout_and_shapes(kind, layers):
    head = build_head(kind, 40, 12)
    assert [type(m) for m in head] == layers
    assert head[0].weight.shape == (24, 40) and head[-1].weight.shape == (12, 24)
    assert (head[0].bias is None) == (kind == "bn")
    assert head(torch.randn(5, 40)).shape == (5, 12)
    assert build_head("linear", 40, 12)(torch.randn(2, 40)).shape == (2, 12)


def test_auto_head_is_bn_for_a_cnn_and_mlp_for_a_vit():
    cnn = timm.create_model("resnet10t", num_classes=2, **SMALL_CNN)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=2, img_size=32, patch_size=16, depth=1)
    assert resolve_head_type("auto", cnn) == "bn" and resolve_head_type("auto", vit) == "mlp"
    with pytest.raises(ValueError, match="model.head_type"):
        resolve_head_type("deep", cnn)


def test_loss_is_ce_plus_lambda_times_alignment_and_lambda_zero_has_no_head():
    model = _model(lam=0.3).train()
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 2, 0]),
             "text_embedding": torch.nn.functional.normalize(torch.randn(4, 16), dim=1)}
    out = model(batch)
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 0.3 * out["align"].item(), rel=1e-6)
    baseline = _model(lam=0.0).train()
    assert baseline.head is None
    assert not any(k.startswith("head.") for k in baseline.state_dict())
    out0 = baseline(batch)
    assert "align" not in out0 and out0["loss"].item() == pytest.approx(out0["ce"].item())
    with pytest.raises(ValueError, match="text embeddings"):
        model({"image": batch["image"], "label": batch["label"]})


def test_topk_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2], [0.3, 0.2, 0.5]])
    assert topk_correct(logits, torch.tensor([1, 2, 0]), ks=(1, 2)) == [1, 3]


def test_export_drops_the_head_and_loads_strictly_into_plain_timm(tmp_path):
    model = _model().eval()
    meta = {**model.checkpoint_meta(), "epoch": 0}
    ckpt = save_trainable(tmp_path / "checkpoint_0.safetensors", model.trainable_state_dict(), meta)
    out = export_classifier(ckpt, tmp_path / "classifier.safetensors")
    state = load_file(str(out))
    assert not any(k.startswith("head") and "fc" not in k for k in state) and "fc.weight" in state
    plain = timm.create_model("resnet10t", num_classes=3, **SMALL_CNN)
    plain.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(plain.eval()(x), model.features(x)[1])


# --------------------------------------------------------------------------- data: the join by key
def _builder(tmp_path, emb, **extra):
    cfg = OmegaConf.create({"build_info": {"train": str(tmp_path / "train"), "embeddings": str(emb)},
                            "vis_processor": {"train": {"name": "classifier_image_train", "image_size": 16},
                                              "eval": {"name": "classifier_image_eval", "image_size": 16}},
                            **extra})
    return DescribedFolderBuilder(cfg)


def test_embeddings_join_by_key_whatever_the_file_order(tmp_path):
    keys = make_folder(tmp_path / "train", per_class=3)
    write_embeddings(tmp_path / "e.safetensors", keys, shuffle=True)
    train_set = _builder(tmp_path, tmp_path / "e.safetensors").build_datasets()["train"]
    assert train_set.keys == keys and train_set.classes == ["circle", "square", "triangle"]
    for i, key in enumerate(keys):
        sample = train_set.load(i, seed=1)
        assert torch.equal(sample["text_embedding"], key_vector(key, 16))
        assert sample["label"] == train_set.classes.index(key.split("/")[0])


def test_missing_description_is_a_counted_skip_or_an_error(tmp_path):
    keys = make_folder(tmp_path / "train", per_class=3)
    write_embeddings(tmp_path / "e.safetensors", keys[1:])
    kept = _builder(tmp_path, tmp_path / "e.safetensors").build_datasets()["train"]
    assert len(kept) == len(keys) - 1 and kept.build_skips == {"missing_description": 1}
    assert keys[0] not in kept.keys
    with pytest.raises(ValueError, match=r"missing_description.*1 image|1 image\(s\) have no description"):
        _builder(tmp_path, tmp_path / "e.safetensors", missing_description="error").build_datasets()


def test_shuffled_descriptions_give_every_image_another_images_embedding(tmp_path):
    keys = make_folder(tmp_path / "train", per_class=3)
    write_embeddings(tmp_path / "e.safetensors", keys)
    ds = _builder(tmp_path, tmp_path / "e.safetensors", shuffle_descriptions=True).build_datasets()["train"]
    own = torch.stack([key_vector(k, 16) for k in ds.keys])
    assert not any(torch.equal(ds.targets[i], own[i]) for i in range(len(ds)))
    assert sorted(ds.targets.sum(1).tolist()) == pytest.approx(sorted(own.sum(1).tolist()))  # same set, permuted
    perm = derangement(7, seed=3)
    assert sorted(perm.tolist()) == list(range(7)) and all(perm[i] != i for i in range(7))


# --------------------------------------------------------------------------- config keys per arch
def test_model_keys_are_checked_against_the_arch_schema(tmp_path):
    make_folder(tmp_path / "train", per_class=1)
    cfg = train_config(tmp_path, tmp_path / "train", None, lam=0.0, extra_model={"lamda": 0.3})
    with pytest.raises(ConfigError, match="unknown key model.lamda.*'lambda'"):
        Config.load(cfg)
    ok = train_config(tmp_path, tmp_path / "train", None, lam=0.0)
    assert Config.load(ok).model_cfg.backbone == "resnet10t"
    with pytest.raises(ConfigError, match="unknown key model.backbone"):  # not a MiniGPT-4 key
        Config.load(cfg_dict={"model": {"arch": "minigpt4", "backbone": "resnet50"}})


# --------------------------------------------------------------------------- bad input through train.py
@pytest.fixture
def no_model(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was built before the bad input was reported")

    monkeypatch.setattr(GPT4ImageClassifier, "from_config", boom)


def _cli(capsys, cfg, *extra):
    threads = torch.get_num_threads()
    try:
        code = train.cli(["--cfg-path", str(cfg), *extra])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def test_embedding_file_for_other_images_is_refused(tmp_path, capsys, no_model):
    make_folder(tmp_path / "train", per_class=2)
    write_embeddings(tmp_path / "e.safetensors", ["dog/1.jpg", "cat/2.jpg"])
    code, line = _cli(capsys, train_config(tmp_path, tmp_path / "train", tmp_path / "e.safetensors"))
    assert code == 2
    assert "datasets.gpt4image_folder.build_info.embeddings" in line and "other images" in line


def test_missing_embedding_file_is_refused(tmp_path, capsys, no_model):
    make_folder(tmp_path / "train", per_class=2)
    code, line = _cli(capsys, train_config(tmp_path, tmp_path / "train", tmp_path / "nope.safetensors"))
    assert code == 2 and "build_info.embeddings" in line and "nope.safetensors: no such embedding file" in line


def test_wrong_embedding_dimension_is_refused_before_training(tmp_path, capsys, monkeypatch):
    keys = make_folder(tmp_path / "train", per_class=2)
    write_embeddings(tmp_path / "e.safetensors", keys, dim=16)
    monkeypatch.setattr("minigpt4.gpt4image.runner.ClassifierRunner.train",
                        lambda self: (_ for _ in ()).throw(AssertionError("training started")))
    cfg = train_config(tmp_path, tmp_path / "train", tmp_path / "e.safetensors", extra_model={"text_dim": 512})
    code, line = _cli(capsys, cfg)
    assert code == 2 and line.endswith("model.text_dim is 512 but the data gives 16")


def test_missing_backbone_checkpoint_names_the_key(tmp_path, capsys):
    keys = make_folder(tmp_path / "train", per_class=2)
    write_embeddings(tmp_path / "e.safetensors", keys)
    cfg = train_config(tmp_path, tmp_path / "train", tmp_path / "e.safetensors",
                       extra_model={"backbone_ckpt": str(tmp_path / "r50.pth")})
    code, line = _cli(capsys, cfg)
    assert code == 2 and "model.backbone_ckpt" in line and "r50.pth does not exist" in line


@pytest.mark.parametrize("case", ["label_smoothing", "mixup", "cutmix", "crop_scales"])
def test_out_of_range_settings_are_refused_when_the_config_loads(tmp_path, capsys, no_model, case):
    make_folder(tmp_path / "train", per_class=1)
    crop = {"name": "classifier_image_train", "image_size": 32, "min_scale": 0.9, "max_scale": 0.5}
    extra = {"label_smoothing": {"extra_model": {"label_smoothing": 1.5}},
             "mixup": {"extra_model": {"mixup": -1}}, "cutmix": {"extra_model": {"cutmix": -0.5}},
             "crop_scales": {"extra_data": {"vis_processor": {"train": crop}}}}[case]
    code, line = _cli(capsys, train_config(tmp_path, tmp_path / "train", None, lam=0.0, **extra))
    expected = {"label_smoothing": "model.label_smoothing must be < 1, got 1.5",
                "mixup": "model.mixup must be >= 0, got -1", "cutmix": "model.cutmix must be >= 0, got -0.5",
                "crop_scales": "datasets.gpt4image_folder.vis_processor.train: min_scale 0.9 must be <= max_scale 0.5"}
    assert code == 2 and line.startswith(f"train.py: error: {expected[case]}"), line


def test_a_backbone_kwarg_timm_does_not_take_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, capsys,
                                                                                        monkeypatch):
    keys = make_folder(tmp_path / "train", per_class=1)
    write_embeddings(tmp_path / "e.safetensors", keys)
    cfg = train_config(tmp_path, tmp_path / "train", tmp_path / "e.safetensors",
                       extra_model={"backbone_kwargs": {**SMALL_CNN, "nope": 1}})
    code, line = _cli(capsys, cfg)
    assert code == 2 and line.startswith("train.py: error: model.backbone_kwargs.nope: timm's 'resnet10t' takes "
                                         "no argument 'nope'"), line
    with pytest.raises(ConfigError, match=r"^model.img_size \(or model.backbone_kwargs.img_size\): timm's"):
        GPT4ImageClassifier("resnet10t", 3, lam=0.0, backbone_kwargs={"img_size": 32})

    def bug(*args, **kwargs):
        raise TypeError("helper() got an unexpected keyword argument 'inner'")

    monkeypatch.setattr(timm, "create_model", bug)
    with pytest.raises(TypeError, match="'inner'"):
        GPT4ImageClassifier("resnet10t", 3, lam=0.0, backbone_kwargs=SMALL_CNN)


def test_backbone_checkpoint_from_a_local_file_with_another_class_count(tmp_path):
    src = timm.create_model("resnet10t", num_classes=10, **SMALL_CNN)
    save_file(src.state_dict(), str(tmp_path / "init.safetensors"))
    cfg = OmegaConf.create({"backbone": "resnet10t", "backbone_kwargs": SMALL_CNN, "lambda": 0.0,
                            "backbone_ckpt": str(tmp_path / "init.safetensors")})
    model = GPT4ImageClassifier.from_config(cfg, num_classes=3)
    assert torch.equal(model.backbone.conv1[0].weight, src.conv1[0].weight)
    assert model.backbone.fc.weight.shape == (3, 16)


# --------------------------------------------------------------------------- a short run through train.py
def test_train_py_runs_evaluates_and_exports(tmp_path, capsys):
    keys = make_folder(tmp_path / "train", per_class=4)
    make_folder(tmp_path / "val", per_class=2, seed=1)
    write_embeddings(tmp_path / "e.safetensors", keys)
    cfg = train_config(tmp_path, tmp_path / "train", tmp_path / "e.safetensors", val=tmp_path / "val",
                       extra_model={"backbone_kwargs": SMALL_CNN})
    code, _ = _cli(capsys, cfg)
    assert code == 0
    job = tmp_path / "out" / "job"
    lines = [json.loads(x) for x in (job / "log.txt").read_text().splitlines()]
    assert lines[-1]["epoch"] == 0 and lines[-1]["val_images"] == 6 and 0 <= lines[-1]["val_top1"] <= 1
    meta = json.loads((job / "checkpoint_0.json").read_text())
    assert meta["class_names"] == ["circle", "square", "triangle"] and meta["text_dim"] == 16
    assert (job / "curves.png").is_file()
    plain = timm.create_model("resnet10t", num_classes=3, **SMALL_CNN)
    plain.load_state_dict(load_file(str(job / "classifier.safetensors")), strict=True)
    assert losses.is_global("clip") and not losses.is_global("ctr")


def test_unreadable_val_images_are_skipped_and_counted(tmp_path, capsys):
    keys = make_folder(tmp_path / "train", per_class=4)
    make_folder(tmp_path / "val", per_class=2, seed=1)
    (tmp_path / "val" / "circle" / "broken.png").write_bytes(b"\x89PNG not really")
    write_embeddings(tmp_path / "e.safetensors", keys)
    cfg = train_config(tmp_path, tmp_path / "train", tmp_path / "e.safetensors", val=tmp_path / "val",
                       extra_model={"backbone_kwargs": SMALL_CNN})
    code, _ = _cli(capsys, cfg)
    assert code == 0
    last = json.loads((tmp_path / "out" / "job" / "log.txt").read_text().splitlines()[-1])
    assert last["val_images"] == 6 and last["val_skipped"] == 1


def test_batches_made_small_by_skipped_images():
    model = _model(mixup=timm.data.Mixup(mixup_alpha=0.8, num_classes=3)).train()
    batch = {"image": torch.randn(3, 3, 32, 32), "label": torch.tensor([0, 1, 2]), "text_embedding": torch.randn(3, 16)}
    assert model(batch)["num_tokens"] == 2  # mixup pairs images: the odd one sits the step out
    model = _model().train()
    with pytest.raises(BatchTooSmall, match="the projection head's BatchNorm needs 2"):
        model({k: v[:1] for k, v in batch.items()})


@pytest.mark.parametrize("name, says", [("hf-hub:timm/resnet18.a1_in1k", "timm architecture name"),
                                        ("local-dir:/tmp/x", "timm architecture name"),
                                        ("a/b", "timm architecture name")])
def test_backbone_names_that_would_download_or_read_elsewhere_are_refused(name, says, monkeypatch):
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("timm was asked"))
    with pytest.raises(ConfigError, match=says):
        GPT4ImageClassifier(name, 3, lam=0.0)
    with pytest.raises(ConfigError, match="model.backbone_kwargs.num_classes: set by the library"):
        GPT4ImageClassifier("resnet10t", 3, lam=0.0, backbone_kwargs={"num_classes": 10})
    with pytest.raises(ConfigError, match=r"model.backbone_kwargs.in_chans: the image processors give RGB"):
        GPT4ImageClassifier("resnet10t", 3, lam=0.0, backbone_kwargs={"in_chans": 1})


@pytest.mark.parametrize("case", ["odd_mixup", "bn_batch_1"])
def test_batch_sizes_the_network_cannot_take_are_refused_before_training(tmp_path, capsys, case):
    keys = make_folder(tmp_path / "train", per_class=4)
    write_embeddings(tmp_path / "e.safetensors", keys)
    model = {"backbone_kwargs": SMALL_CNN, **({"mixup": 0.8} if case == "odd_mixup" else {})}
    cfg = train_config(tmp_path, tmp_path / "train", tmp_path / "e.safetensors", extra_model=model,
                       batch_size=3 if case == "odd_mixup" else 1)
    code, line = _cli(capsys, cfg)
    says = {"odd_mixup": "run.batch_size_train must be even with model.mixup",
            "bn_batch_1": "run.batch_size_train must be at least 2 with the bn projection head"}[case]
    assert code == 2 and says in line, line


# --------------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("name", ["gpt4image_resnet50_imagenet", "gpt4image_deit_base_imagenet",
                                  "gpt4image_resnet18_cifar", "gpt4image_tiny_cnn", "gpt4image_tiny_vit"])
def test_shipped_configs_validate_and_name_real_timm_models(name):
    from tests.train_helpers import REPO

    cfg = Config.load(REPO / "train_configs" / f"{name}.yaml")
    model = cfg.model_cfg
    assert timm.is_model(model.backbone)
    assert cfg.run_cfg.runner == "runner_classifier" and cfg.run_cfg.task == "image_classification"
    expected_tau = 0.05 if "vit" in name or "deit" in name else 0.2
    assert model.tau == expected_tau and model["lambda"] == 0.3
    if "tiny" in name:  # small enough to build here
        built = GPT4ImageClassifier.from_config(model, num_classes=3, text_dim=384)
        assert built.head[-1].out_features == 384


def test_export_cli(tmp_path, capsys):
    from minigpt4.gpt4image import export

    model = _model()
    ckpt = save_trainable(tmp_path / "checkpoint_0.safetensors", model.trainable_state_dict(), model.checkpoint_meta())
    assert export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "m.safetensors")]) == 0
    assert set(load_file(str(tmp_path / "m.safetensors"))) == set(model.backbone.state_dict())
    assert export.main(["--checkpoint", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "x")]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    before = ckpt.read_bytes()
    for out, says in ((ckpt, "a file of the training run itself"), (tmp_path / "checkpoint_9.safetensors",
                                                                    "a file of the training run itself"),
                      (tmp_path, "is a folder")):
        assert export.main(["--checkpoint", str(ckpt), "--out", str(out)]) == 2
        assert says in capsys.readouterr().err.strip().splitlines()[-1]
    assert ckpt.read_bytes() == before and not (tmp_path / "checkpoint_9.safetensors").exists()
    sidecar = ckpt.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    for change, says in (({"num_classes": 7}, "(resnet10t, 7 classes) does not describe its weights (size mismatch"),
                         ({"backbone": "resnet18"}, "(resnet18, 3 classes) does not describe its weights"),
                         ({"backbone": "nope_model"}, "names backbone 'nope_model', which timm does not have"),
                         ({"backbone_kwargs": [1]}, "needs backbone (a timm name), num_classes (>= 1) and")):
        sidecar.write_text(json.dumps({**meta, **change}))
        assert export.main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "n.safetensors")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0] and len(err[0]) < 500, err


def test_list_file_instead_of_scanning_and_keys_relative_to_root(tmp_path):
    keys = make_folder(tmp_path / "train", per_class=2)
    write_embeddings(tmp_path / "e.safetensors", keys)
    listed = [k for k in keys if not k.startswith("square/")]
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"{k},{k.split('/')[0]}\n" for k in listed))
    cfg = OmegaConf.create({"build_info": {"train": str(tmp_path / "train"), "train_list": str(tmp_path / "list.csv"),
                                           "embeddings": str(tmp_path / "e.safetensors")},
                            "vis_processor": {"train": {"name": "classifier_image_train", "image_size": 16},
                                              "eval": {"name": "classifier_image_eval", "image_size": 16}}})
    ds = DescribedFolderBuilder(cfg).build_datasets()["train"]
    assert ds.keys == listed and ds.classes == ["circle", "triangle"]
    assert torch.equal(ds.load(0)["text_embedding"], key_vector(listed[0], 16))


def test_a_vit_that_takes_another_image_size_than_the_processor_gives_is_one_line(tmp_path, capsys):
    keys = make_folder(tmp_path / "train", per_class=2)
    write_embeddings(tmp_path / "e.safetensors", keys)
    cfg = train_config(tmp_path, tmp_path / "train", tmp_path / "e.safetensors", backbone="vit_tiny_patch16_224",
                       image_size=32, extra_model={"backbone_kwargs": {"img_size": 64, "depth": 1}})
    code, line = _cli(capsys, cfg)
    assert code == 2 and "vis_processor.train.image_size is 32 but the backbone takes 64x64 images" in line, line


def test_shuffled_control_without_descriptions_is_one_line(tmp_path, capsys, no_model):
    make_folder(tmp_path / "train", per_class=1)
    cfg = train_config(tmp_path, tmp_path / "train", None, lam=0.0, extra_data={"shuffle_descriptions": True})
    code, line = _cli(capsys, cfg)
    assert code == 2 and "shuffle_descriptions needs descriptions to shuffle" in line, line


def test_folder_and_list_problems_name_the_config_key_not_the_caption_flags(tmp_path, capsys, no_model):
    (tmp_path / "flat").mkdir()
    draw = make_folder(tmp_path / "src", per_class=1)
    (tmp_path / "flat" / "a.png").write_bytes((tmp_path / "src" / draw[0]).read_bytes())
    code, line = _cli(capsys, train_config(tmp_path, tmp_path / "flat", None, lam=0.0))
    assert code == 2 and f"build_info.train: {tmp_path / 'flat'}: no image in a class folder" in line, line
    assert "--images" not in line
