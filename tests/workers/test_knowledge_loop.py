"""The knowledge loop on loopback daemons with tiny random models: a BERT trainer group's adapter
teaches LLaMA nodes that have no labels; they train LoRA adapters of their own on the teacher's soft
anchor labels and keep them in sync with each other.

Node "teacher": a `trainer` on labelled data + a `transfer` teacher that teaches what that trainer's
synchronised adapter predicts (trainer = "lora"). Nodes "gpt2"/"llama" (both hosting the tiny LLaMA
here, named after the identities the fixtures have): a `trainer` without train_data + a `transfer`
student whose `learner` is that trainer.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from meshnode.control import query  # noqa: E402
from meshnode.hdc.knowledge import PredictionKnowledge  # noqa: E402
from meshnode.hdc.space import Space  # noqa: E402
from meshnode.node import Node  # noqa: E402
from meshnode.sim.identities import simulated_mesh  # noqa: E402
from meshnode.workers.base import WorkerSettingsError  # noqa: E402
from meshnode.workers.trainer import TaughtRows  # noqa: E402
from meshnode.workers.trainer_protocol import TrainerRefused  # noqa: E402
from meshnode.workers.transfer import TransferWorker  # noqa: E402
from meshnode.workers.transfer_protocol import Expectation, knowledge_bodies, with_digest  # noqa: E402
from meshnode.workers.transfer_settings import parse_settings  # noqa: E402

from .._mesh import aio, node_config, running, wait_for  # noqa: E402
from ._text import CLASSES, synthetic, tokenizer, write_dataset  # noqa: E402

pytestmark = pytest.mark.timeout(240)

DIM = 1024
LEARNERS = ("l1", "l2")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("loop")
    # Seeded keys: a trainer mixes its node id into its data order, so fixed ids make the runs repeat.
    ids = simulated_mesh(root / "ids", ("teacher", "watcher", *LEARNERS, "l3", "l4"), 11, now=datetime.now(timezone.utc))
    torch.manual_seed(0)
    bert = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64)
    transformers.AutoModel.from_config(bert).save_pretrained(root / "models" / "bert")
    tokenizer("bert").save_pretrained(root / "models" / "bert")
    torch.manual_seed(1)
    llama = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_key_value_heads=2, max_position_embeddings=64,
                                     bos_token_id=1, eos_token_id=1)
    transformers.AutoModel.from_config(llama).save_pretrained(root / "models" / "llama")
    tokenizer("llama").save_pretrained(root / "models" / "llama")
    anchors, _ = synthetic(160, 2)
    (root / "anchors.txt").write_text("\n".join(anchors) + "\n")
    train = write_dataset(root / "train", "train", *synthetic(240, 1))
    evaluation = write_dataset(root / "eval", "dev", *synthetic(120, 3))
    return {"root": root, "ids": ids, "bert": str(root / "models" / "bert"), "llama": str(root / "models" / "llama"),
            "anchors": str(root / "anchors.txt"), "train": str(train), "eval": str(evaluation),
            "cache": str(root / "cache")}


def trainer_settings(world: dict[str, Any], model: str, **over: Any) -> dict[str, Any]:
    return {"task": "keywords", "model": world[model], "eval_data": str(world["eval"]), "lora_rank": 4, "lr": 1e-2,
            "batch_size": 16, "max_length": 16, "steps_per_round": 8, "rounds": 16, "codec": "ternary-ef",
            "round_deadline": 20.0, "hello_interval": 0.2, "member_timeout": 5.0, "join_wait": 0.2,
            "device": "cpu", "threads": 1, "chunk_bytes": 4096, **over}


def transfer_common(world: dict[str, Any], model: str) -> dict[str, Any]:
    return {"task": "keywords", "model": world[model], "anchors": world["anchors"], "dim": DIM, "space_seed": 3,
            "cache_dir": world["cache"], "device": "cpu"}


def teacher_node(world: dict[str, Any], tmp: Path, **over: Any) -> Node:
    workers = [
        {"name": "lora", "type": "trainer",
         "settings": trainer_settings(world, "bert", train_data=world["train"], lora_targets=["query", "value"],
                                      lr=3e-2, rounds=8)},
        {"name": "xfer", "type": "transfer",
         "settings": {"role": "teacher", **transfer_common(world, "bert"), "trainer": "lora", "publish_every": 2,
                      "knowledge": ["predictions"], "min_republish_gap": 0.1, "republish_interval": 30.0, **over}},
    ]
    cfg = node_config(tmp / "teacher", world["ids"]["teacher"], workers=workers)
    return Node(cfg, world["ids"]["teacher"], rng=random.Random(1))


def learner_node(world: dict[str, Any], tmp: Path, name: str, static: list[str], *,
                 student: dict[str, Any] | None = None, **trainer_over: Any) -> Node:
    """A learner (trainer with no labels) and its student; `student` replaces student settings (a
    value of None removes the key)."""
    student_settings = {"role": "student", **transfer_common(world, "llama"), "learner": "lora",
                        "eval_data": str(world["eval"]), "eval_split": "dev", "announce_interval": 0.3}
    for key, value in (student or {}).items():
        if value is None:
            student_settings.pop(key, None)
        else:
            student_settings[key] = value
    workers = [
        {"name": "lora", "type": "trainer",
         "settings": trainer_settings(world, "llama", **{"min_peers": 1, "lora_targets": ["q_proj", "v_proj"],
                                                          **trainer_over})},
        {"name": "xfer", "type": "transfer", "settings": student_settings},
    ]
    cfg = node_config(tmp / name, world["ids"][name], static=static, workers=workers)
    return Node(cfg, world["ids"][name], rng=random.Random(hash(name) % 1000))


def status(node: Node, worker: str) -> dict[str, Any]:
    entry = next(w for w in node.workers() if w["name"] == worker)
    assert entry["state"] == "running" and entry["status"].get("state") != "failed", entry
    return entry["status"]


def metrics(node: Node, worker: str) -> dict[str, Any]:
    return next(w for w in node.workers() if w["name"] == worker)["metrics"]


def local(node: Node, worker: str) -> Any:
    return node._local_worker(worker)


def watcher_node(world: dict[str, Any], tmp: Path, static: list[str]) -> Node:
    """A frozen student (no learner): the transfer worker as it was, adopting each version."""
    workers = [{"name": "xfer", "type": "transfer",
                "settings": {"role": "student", **transfer_common(world, "llama"), "eval_data": str(world["eval"]),
                             "eval_split": "dev", "announce_interval": 0.3}}]
    cfg = node_config(tmp / "watcher", world["ids"]["watcher"], static=static, workers=workers)
    return Node(cfg, world["ids"]["watcher"], rng=random.Random(7))


@aio
async def test_learners_of_another_architecture_train_adapters_from_a_trainer_backed_teacher(world, tmp_path) -> None:
    teacher = teacher_node(world, tmp_path)
    async with running(teacher):
        peer = [f"127.0.0.1:{teacher.port}"]
        watcher = watcher_node(world, tmp_path, peer)
        async with running(watcher):
            await wait_for(lambda: status(teacher, "lora")["state"] == "done", "the teacher's trainer to finish",
                           timeout=200)
            ts = status(teacher, "xfer")
            # a new version as the adapter advanced: every 2 merged rounds (more when accuracy jumped)
            assert ts["versions"] >= 4 and ts["version"]["round"] == 8
            assert ts["version"]["adapter"] == status(teacher, "lora")["base"]
            # a student that adopted an earlier version moves on to the last one
            await wait_for(lambda: status(watcher, "xfer").get("teacher_round") == 8,
                           "the student to adopt the teacher's last version")
            assert metrics(watcher, "xfer")["adopted"] >= 1
        # learners that join now learn from the last version (joining mid-training, they would warm-start
        # on each newer one: taught_versions counts them)
        learners = [learner_node(world, tmp_path, n, peer) for n in LEARNERS]
        async with running(*learners):
            await wait_for(lambda: all(status(n, "lora")["state"] == "done" for n in learners),
                           "both learners to finish their rounds", timeout=200)
            for node in learners:
                st = status(node, "xfer")
                lr = status(node, "lora")
                # the student adopted the teacher's last version and handed its anchors to the learner
                await wait_for(lambda: status(node, "xfer").get("teacher_round") == 8,
                               "the student to adopt the teacher's last version")
                st = status(node, "xfer")
                assert st["teacher"] == teacher.identity.node_id_hex
                assert st["learner"]["taught"]["rows"] == 160
                assert metrics(node, "lora")["taught_versions"] >= 1
                assert lr["rows"] == {"labelled": 0, "taught": 160}
                assert lr["epoch"] > 0 and lr["step"] > 0 and lr["loss"] is not None
            # the two learners kept one adapter: every round ends bit-identical on both
            a, b = (status(n, "lora") for n in learners)
            assert a["round"] == b["round"] == 16 and a["base"] == b["base"]
            assert [r["base"] for r in a["history"]] == [r["base"] for r in b["history"]]
            assert all(r["merged"] == 2 for r in a["history"][1:])
            # they learnt the task from the teacher's soft labels alone: no gold label reached them
            for s in (a, b):
                assert s["accuracy"] >= 0.75 and s["accuracy"] > s["initial_accuracy"] + 0.15, s
            # classify answers with the trained adapter, through the student or the trainer alike
            sock = learners[0].config.control.socket
            # (no worker named: the trainer answers, the student that answers through it is no second answer)
            via_node = await query(sock, "classify", texts=["great superb fun", "awful dull boring"])
            assert via_node["labels"] == ["pos", "neg"] and via_node["role"] == "trainer"
            via_student = await query(sock, "classify", texts=["great superb fun", "awful dull boring"], worker="xfer")
            assert via_student["role"] == "student" and via_student["via"] == "lora"
            assert via_student["scores"] == via_node["scores"]
            # hostile rows from a teacher are refused by the learner with a reason, and nothing breaks
            trainer = local(learners[0], "lora")
            bad = np.full((2, 2), np.nan, np.float32)
            with pytest.raises(TrainerRefused) as e:
                await trainer.teach(TaughtRows(("a", "b"), CLASSES, bad, {}))
            assert e.value.code == "bad_rows"
            with pytest.raises(TrainerRefused) as e:
                await trainer.teach(TaughtRows(("a", "b"), ("x", "y"), np.eye(2, dtype=np.float32), {}))
            assert e.value.code == "classes_mismatch"
            assert status(learners[0], "lora")["rows"]["taught"] == 160


@aio
async def test_a_learner_restarts_from_its_checkpoint_without_a_teacher(world, tmp_path) -> None:
    teacher = teacher_node(world, tmp_path)
    async with running(teacher):
        learner = learner_node(world, tmp_path, "l1", [f"127.0.0.1:{teacher.port}"], min_peers=0, rounds=3)
        async with running(learner):
            await wait_for(lambda: status(learner, "lora")["state"] == "done", "the learner's 3 rounds", timeout=200)
            before = status(learner, "lora")
            answer = await query(learner.config.control.socket, "classify", texts=["great fun", "dull poor"])
    # the teacher is gone: the learner comes back with its adapter, and its student re-teaches it
    again = learner_node(world, tmp_path, "l1", [], min_peers=0, rounds=3)
    async with running(again):
        await wait_for(lambda: status(again, "lora").get("restored") is not None
                       and status(again, "xfer")["state"] == "adopted", "the restored adapter and student")
        after = status(again, "lora")
        assert after["restored"]["round"] == 3 and after["base"] == before["base"]
        assert status(again, "xfer")["restored"] is True
        # the restored student hands its rows to the learner again (it would train on them, were its
        # rounds not already done)
        await wait_for(lambda: (status(again, "xfer")["learner"]["taught"] or {}).get("rows") == 160,
                       "the restored rows to be taught")
        assert metrics(again, "lora")["taught_versions"] == 1
        same = await query(again.config.control.socket, "classify", texts=["great fun", "dull poor"])
        assert same["scores"] == answer["scores"]


async def prepared_student(learner: Node) -> TransferWorker:
    """The learner node's student once it and its learner wait for a teacher."""
    await wait_for(lambda: status(learner, "xfer")["state"] == "waiting"
                   and status(learner, "lora")["state"] == "waiting-teacher", "the student and learner to prepare")
    return local(learner, "xfer")


def version(student: TransferWorker, exp: Expectation, probs: np.ndarray, digest: bytes) -> Any:
    """A teacher's `predictions` knowledge body for `exp`, as a teacher would publish it."""
    forms = {"predictions": PredictionKnowledge(CLASSES, probs, exp.anchor_hash, labels="teacher")}
    return with_digest(knowledge_bodies(student.cfg.topic, exp, forms, half=False, info={}), digest)[0]


def member_linked_to(world: dict[str, Any], tmp: Path, learner: Node, seed: int) -> Node:
    """Another member of the mesh (no workers) that dials the learner: its packets come as any would."""
    cfg = node_config(tmp / f"member-{seed}", world["ids"]["teacher"], static=[f"127.0.0.1:{learner.port}"])
    return Node(cfg, world["ids"]["teacher"], rng=random.Random(seed))


async def linked(sender: Node, learner: Node) -> None:
    # status()["peers"] counts links past their hellos: a packet published before that goes nowhere
    await wait_for(lambda: sender.status()["peers"] == 1 and learner.status()["peers"] == 1, "the link")


@aio
async def test_bad_versions_are_refused_with_a_reason_and_the_learner_goes_on(world, tmp_path) -> None:
    learner = learner_node(world, tmp_path, "l2", [], min_peers=0)
    async with running(learner):
        student = await prepared_student(learner)
        exp = student._exp

        fair = np.full((exp.anchor_count, 2), 0.5, np.float32)
        nan = fair.copy()
        nan[3, 1] = np.nan
        bad = {
            "task_mismatch": version(student, dataclasses.replace(exp, task="other-task"), fair, b"\x01" * 16),
            "anchor_hash_mismatch": version(student, dataclasses.replace(exp, anchor_hash=bytes(32)), fair,
                                            b"\x02" * 16),
            "bad_knowledge": version(student, exp, nan, b"\x03" * 16),
        }
        sender = member_linked_to(world, tmp_path, learner, 5)
        async with running(sender):
            await linked(sender, learner)
            for body in bad.values():
                await sender.publish(body)
            await wait_for(lambda: all(metrics(learner, "xfer").get(f"refused.{r}", 0) >= 1 for r in bad),
                           "every bad version to be refused with its reason")
            assert status(learner, "xfer")["state"] == "waiting"
            assert status(learner, "lora")["state"] == "waiting-teacher"
            assert status(learner, "lora")["rows"]["taught"] == 0


@aio
@pytest.mark.parametrize("targets", ["hard", "soft"])
async def test_a_learner_is_taught_the_teachers_classes_or_scores_and_its_student_loads_no_model(
        world, tmp_path, targets) -> None:
    # no eval set on the student: its frozen route would serve nothing and measure nothing, so it
    # is not fitted and the model is not loaded a second time
    learner = learner_node(world, tmp_path, "l3" if targets == "hard" else "l4", [], min_peers=0,
                           student={"eval_data": None, "eval_split": None, "learner_targets": targets})
    async with running(learner):
        student = await prepared_student(learner)
        assert student._embedder is None and status(learner, "xfer")["frozen_route"] is False
        exp = student._exp
        probs = np.random.default_rng(3).dirichlet([2.0, 2.0], size=exp.anchor_count).astype(np.float32)
        sender = member_linked_to(world, tmp_path, learner, 6)
        async with running(sender):
            await linked(sender, learner)
            await sender.publish(version(student, exp, probs, b"\x07" * 16))
            await wait_for(lambda: status(learner, "lora")["rows"]["taught"] == exp.anchor_count,
                           "the teacher's rows to reach the learner")
        taught = local(learner, "lora")._model.taught_targets
        want = np.eye(2, dtype=np.float32)[probs.argmax(1)] if targets == "hard" else probs
        np.testing.assert_allclose(taught, want, rtol=0, atol=1e-6)
        assert status(learner, "xfer")["learner"]["taught"]["targets"] == targets
        # the learner answers for the node; the student, with no route, answers through it
        answer = await query(learner.config.control.socket, "classify", texts=["great fun"], worker="xfer")
        assert answer["via"] == "lora"


def test_settings_of_the_loop_are_checked() -> None:
    base = {"task": "t", "model": "m", "anchors": "a.txt"}
    with pytest.raises(WorkerSettingsError, match="train_data: not used with trainer"):
        parse_settings("x", {"role": "teacher", **base, "trainer": "lora", "train_data": "d"})
    assert parse_settings("x", {"role": "teacher", **base, "trainer": "lora"}).train_data is None
    with pytest.raises(WorkerSettingsError, match="train_data: required"):
        parse_settings("x", {"role": "teacher", **base})
    with pytest.raises(WorkerSettingsError, match="only for role 'student'"):
        parse_settings("x", {"role": "teacher", **base, "trainer": "lora", "learner": "lora"})
    with pytest.raises(WorkerSettingsError, match="pool: only with learner and a map"):
        parse_settings("x", {"role": "student", **base, "learner": "lora", "pool": "p.txt"})
    from meshnode.workers.trainer_settings import parse_settings as trainer_settings_of
    with pytest.raises(WorkerSettingsError, match="needs classes or eval_data"):
        trainer_settings_of("x", {"task": "t", "model": "m"})
    assert trainer_settings_of("x", {"task": "t", "model": "m", "classes": ["a", "b"]}).train_data is None


def test_a_trainer_that_is_not_there_fails_the_worker_with_a_clear_error(world, tmp_path) -> None:
    import asyncio

    async def go() -> None:
        cfg = node_config(tmp_path / "t", world["ids"]["teacher"], workers=[
            {"name": "xfer", "type": "transfer", "settings": {"role": "teacher", **transfer_common(world, "bert"),
                                                              "trainer": "nope"}}])
        node = Node(cfg, world["ids"]["teacher"], rng=random.Random(0))
        async with running(node):
            await wait_for(lambda: node.workers()[0]["status"].get("state") == "failed", "the worker to fail")
            assert "no trainer worker named 'nope'" in node.workers()[0]["status"]["error"]

    asyncio.run(go())


def test_the_teacher_knowledge_of_a_fine_tuned_model_is_its_predictions() -> None:
    from meshnode.workers.transfer_model import fit_teacher_from_predictions

    space = Space(seed=1, dim=256)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(40, 16))
    trits = space.encode(emb, center=emb.mean(0), tau=0.3)
    logit = 3.0 * (emb - emb.mean(0))[:, 0]          # a fine-tuned model that reads the first feature
    probs = np.stack([1 / (1 + np.exp(-logit)), 1 / (1 + np.exp(logit))], axis=1)
    fit = fit_teacher_from_predictions(probs, CLASSES, b"h" * 32, trits, emb.mean(0),
                                       forms=("linear", "prototypes", "predictions"), predictions="soft")
    np.testing.assert_allclose(fit.forms["predictions"].predictions, probs.astype(np.float32))
    assert fit.forms["linear"].labels == fit.forms["prototypes"].labels == "teacher"
    # the ridge probe reproduces the teacher's hard decisions on its own anchors for the most part
    agree = (fit.forms["linear"].predict(trits) == probs.argmax(1)).mean()
    assert agree > 0.8
    with pytest.raises(ValueError, match="not finite"):
        fit_teacher_from_predictions(np.full((40, 2), np.nan), CLASSES, b"h" * 32, trits, emb.mean(0),
                                     forms=("predictions",), predictions="soft")


@aio
async def test_a_member_spamming_versions_costs_one_fit_per_gap_not_one_per_packet(world, tmp_path) -> None:
    from meshnode.workers.transfer import _FIT_GAP_S

    learner = learner_node(world, tmp_path, "l1", [], min_peers=0)
    async with running(learner):
        student = await prepared_student(learner)
        exp = student._exp
        rng = np.random.default_rng(0)
        # ten valid versions, each with its own digest, back to back
        bodies = [version(student, exp, rng.dirichlet([1, 1], size=exp.anchor_count).astype(np.float32),
                          bytes([i + 1]) * 16) for i in range(10)]
        sender = member_linked_to(world, tmp_path, learner, 9)
        async with running(sender):
            await linked(sender, learner)
            for body in bodies:
                await sender.publish(body)
            # the first version is fitted at once; the ones that follow wait out the gap (at most
            # max_teachers of them are held at all: the rest are dropped), and all but the newest held
            # then find a newer one ready and step aside: two fits for ten versions
            settled = lambda m: m.get("adopted", 0) == 2 and \
                m.get("ignored.superseded", 0) + m.get("dropped.too_many_teachers", 0) == 8  # noqa: E731
            # (a fit is adopted, then handed to the learner: wait for both)
            await wait_for(lambda: settled(metrics(learner, "xfer")) and metrics(learner, "lora").get(
                "taught_versions", 0) == 2, "one fit now and one after the gap", timeout=45 + _FIT_GAP_S)
            m = metrics(learner, "xfer")
            assert m["deferred.fit_rate"] >= 1 and m.get("fit_errors", 0) == 0
            assert m.get("dropped.too_many_teachers", 0) <= 10 - student.cfg.max_teachers
            assert status(learner, "xfer")["digest"] != (bytes([1]) * 16).hex()
            assert metrics(learner, "lora")["taught_versions"] == 2
