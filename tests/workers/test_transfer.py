"""The transfer worker: teachers and students of different tiny architectures over loopback daemons.

The task is synthetic and linearly separable: a text is filler words plus one or two keywords of its
class. The teacher (a tiny random BERT) trains on gold labels; the students (a tiny random GPT-2 and
a tiny random LLaMA) have no training labels at all, only an eval set to measure themselves, so
whatever they get right comes from the teacher's knowledge. The same pipeline fed knowledge that
carries none (a teacher trained on shuffled labels), and the teacher's probe applied without any
map, are the untrained baselines: they stay near chance.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from click.testing import CliRunner  # noqa: E402

from meshnode import identity as idm  # noqa: E402
from meshnode.cli import main as cli_main  # noqa: E402
from meshnode.control import ControlError, query  # noqa: E402
from meshnode.hdc.knowledge import LinearKnowledge, PredictionKnowledge, anchor_hash  # noqa: E402
from meshnode.hdc.space import Space  # noqa: E402
from meshnode.models import Embedder  # noqa: E402
from meshnode.node import Node  # noqa: E402
from meshnode.wire.packet import Knowledge, Signer, Tensor, VectorBlock, Vectors, decode_packet, encode_packet  # noqa: E402
from meshnode.workers.anchors import AnchorSetError, load_anchor_set  # noqa: E402
from meshnode.workers.base import WorkerSettingsError  # noqa: E402
from meshnode.workers.registry import load_worker_class  # noqa: E402
from meshnode.workers.transfer_model import fit_student, fit_teacher  # noqa: E402
from meshnode.workers.transfer_protocol import (  # noqa: E402
    Assembly,
    Expectation,
    TransferRefused,
    anchor_chunks,
    check_knowledge,
    check_vectors,
    content_digest,
    knowledge_bodies,
    student_hello,
    with_digest,
)
from meshnode.workers.transfer_settings import parse_settings  # noqa: E402

from .._mesh import aio, node_config, running, wait_for  # noqa: E402
from ._text import CLASSES, synthetic, tokenizer, write_dataset  # noqa: E402

pytestmark = pytest.mark.timeout(120)

DIM = 2048
CHANCE_MARGIN = 0.15   # an untrained baseline stays within this of 0.5; a transfer must clear 0.8


def _model(kind: str, seed: int) -> Any:
    torch.manual_seed(seed)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=64)
    elif kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=64, n_embd=48, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=1, eos_token_id=1)
    else:
        cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=96, num_key_value_heads=2, max_position_embeddings=64,
                                       bos_token_id=1, eos_token_id=1)
    return transformers.AutoModel.from_config(cfg).eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("transfer")
    ca = idm.init_mesh(root / "mesh")
    ids = {n: idm.init_node(root / "ids" / n, ca, n) for n in ("teacher", "gpt2", "llama", "other")}
    models = {}
    for kind, seed in (("bert", 0), ("gpt2", 1), ("llama", 2)):
        _model(kind, seed).save_pretrained(root / "models" / kind)
        tokenizer(kind).save_pretrained(root / "models" / kind)
        models[kind] = str(root / "models" / kind)
    anchors, _ = synthetic(200, 2)
    (root / "anchors.txt").write_text("\n".join(anchors) + "\n")
    # a participant whose anchor file differs in one text
    (root / "anchors-other.txt").write_text("\n".join(["the plot"] + anchors[1:]) + "\n")
    train_texts, train_labels = synthetic(300, 1)
    train = write_dataset(root / "train", "train", train_texts, train_labels)
    # a teacher whose labels carry no information about the texts
    shuffled = write_dataset(root / "train-shuffled", "train", train_texts,
                              [int(y) for y in np.random.default_rng(0).permutation(train_labels)])
    evaluation = write_dataset(root / "eval", "dev", *synthetic(300, 3))
    return {"root": root, "ids": ids, "models": models, "anchors": root / "anchors.txt",
            "anchors_other": root / "anchors-other.txt", "train": train, "train_shuffled": shuffled,
            "eval": evaluation,
            "cache": root / "cache"}


def common(world: dict[str, Any], model: str, **over: Any) -> dict[str, Any]:
    return {"task": "keywords", "model": world["models"][model], "anchors": str(world["anchors"]), "dim": DIM,
            "space_seed": 7, "cache_dir": str(world["cache"]), "device": "cpu", **over}


def teacher_settings(world: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {"role": "teacher", **common(world, "bert"), "train_data": str(world["train"]),
            "eval_data": str(world["eval"]), "min_republish_gap": 0.1, "republish_interval": 30.0,
            "chunk_bytes": 16 << 10, "chunk_interval": 0.0, "knowledge": ["linear", "predictions"], **over}


def student_settings(world: dict[str, Any], model: str, **over: Any) -> dict[str, Any]:
    return {"role": "student", **common(world, model), "eval_data": str(world["eval"]),
            "announce_interval": 0.3, **over}


def make_node(world: dict[str, Any], tmp: Path, name: str, settings: dict[str, Any], *, port: int = 0,
              static: list[str] | None = None, seed: int = 0, data: str | None = None) -> Node:
    cfg = node_config(tmp / (data or name), world["ids"][name], port=port, static=static,
                      workers=[{"name": "xfer", "type": "transfer", "settings": settings}])
    return Node(cfg, world["ids"][name], rng=random.Random(seed))


def wstatus(node: Node) -> dict[str, Any]:
    (entry,) = node.workers()
    assert entry["state"] == "running" and entry["status"]["state"] != "failed", entry
    return entry["status"]


# ------------------------------------------------------------------------------------------ end to end


@aio
async def test_students_of_other_architectures_learn_the_task_from_a_bert_teacher(world, tmp_path) -> None:
    teacher = make_node(world, tmp_path, "teacher", teacher_settings(world), seed=1)
    async with running(teacher):
        peer = [f"127.0.0.1:{teacher.port}"]
        # two students, two routes: the default (own probe on the teacher's anchor predictions) and a
        # ridge map into the teacher's space (needs the anchor vectors, which the teacher then sends)
        gpt2 = make_node(world, tmp_path, "gpt2", student_settings(world, "gpt2"), static=peer, seed=2)
        llama = make_node(world, tmp_path, "llama", student_settings(world, "llama", alignment="ridge"),
                          static=peer, seed=3)
        async with running(gpt2, llama):
            await wait_for(lambda: all(wstatus(n)["state"] == "adopted" for n in (gpt2, llama)),
                           "both students to adopt the teacher's knowledge", timeout=60)
            t, g, lm = wstatus(teacher), wstatus(gpt2), wstatus(llama)
            assert t["accuracy"] > 0.9 and t["students"] == 2
            for s, form in ((g, "predictions"), (lm, "linear")):
                assert s["teacher"] == teacher.identity.node_id_hex and s["form"] == form
                assert s["accuracy"] >= 0.8, s          # chance is 0.5 (balanced eval set of 300)
                assert s["eval_size"] == 300 and s["refused"] == {}
            # what each route cost on the wire: N x C predictions vs N x D trits (+ the probe)
            assert 0 < 4 * g["bytes_received"] < lm["bytes_received"]
            assert lm["bytes_received"] > 200 * DIM // 5   # all the anchor vectors, packed, came through
            assert teacher.workers()[0]["metrics"]["published.anchor_chunks"] >= 4   # 16 KiB chunks
            # classification through the control API and through `meshnode predict`
            texts = ["the film was great and fun", "a boring and awful plot", "superb", "dull"]
            answer = await query(gpt2.config.control.socket, "classify", texts=texts, timeout=30)
            assert answer["labels"] == ["pos", "neg", "pos", "neg"] and answer["teacher"] == g["teacher"]
            result = await asyncio.to_thread(
                CliRunner().invoke, cli_main,
                ["predict", "--socket", str(llama.config.control.socket), "--json", *texts])
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout)["labels"] == ["pos", "neg", "pos", "neg"]
            result = await asyncio.to_thread(
                CliRunner().invoke, cli_main, ["predict", "--socket", str(gpt2.config.control.socket), "-"],
                input="\n".join(texts) + "\n")
            assert result.exit_code == 0, result.output
            assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["pos", "neg", "pos", "neg"]
            assert "teacher " + g["teacher"][:16] in result.stderr
            with pytest.raises(ControlError, match="non-empty list"):
                await query(gpt2.config.control.socket, "classify", texts=[], timeout=30)
            saved = json.loads((gpt2.config.node.data_dir / "workers" / "xfer" / "result.json").read_text())
            assert saved["teacher"] == g["teacher"] and saved["accuracy"] == g["accuracy"]
            scores_before = answer["scores"]
    # the adopted knowledge survives a restart without any teacher around
    again = make_node(world, tmp_path, "gpt2", student_settings(world, "gpt2"), seed=4)
    async with running(again):
        await wait_for(lambda: wstatus(again)["state"] == "adopted", "the saved result to be restored")
        s = wstatus(again)
        assert s["restored"] is True and s["accuracy"] == g["accuracy"]
        answer = await query(again.config.control.socket, "classify", texts=texts, timeout=30)
        np.testing.assert_allclose(answer["scores"], scores_before, rtol=1e-5, atol=1e-6)


@aio
async def test_a_student_that_needs_predictions_is_sent_predictions_only(world, tmp_path) -> None:
    # the student is up first and says hello every 0.3 s: the teacher hears it before its first round
    # (it listens up to 12 s for one), which then carries what the student asked for, not every form
    # (20-70x the bytes of its route: issue 18)
    gpt2 = make_node(world, tmp_path, "gpt2", student_settings(world, "gpt2"), seed=2)
    async with running(gpt2):
        teacher = make_node(world, tmp_path, "teacher", teacher_settings(world), static=[f"127.0.0.1:{gpt2.port}"],
                            seed=1)
        async with running(teacher):
            await wait_for(lambda: wstatus(gpt2)["state"] == "adopted", "the student to adopt", timeout=60)
            metrics = teacher.workers()[0]["metrics"]
            assert metrics.get("published.predictions", 0) >= 1
            assert not {k for k in metrics if k.startswith("published.") and k != "published.predictions"}, metrics
            g = wstatus(gpt2)
            assert g["form"] == "predictions" and g["bytes_received_total"] <= 2 * g["bytes_received"]


@aio
async def test_mismatched_anchor_set_and_dimension_are_refused_with_a_reason(world, tmp_path) -> None:
    teacher = make_node(world, tmp_path, "teacher", teacher_settings(world, send_anchors="always"), seed=5)
    async with running(teacher):
        peer = [f"127.0.0.1:{teacher.port}"]
        wrong_anchors = make_node(world, tmp_path, "gpt2", student_settings(
            world, "gpt2", anchors=str(world["anchors_other"]), alignment="ridge"), static=peer, seed=6)
        wrong_dim = make_node(world, tmp_path, "llama", student_settings(world, "llama", dim=1024),
                              static=peer, seed=7)
        async with running(wrong_anchors, wrong_dim):
            await wait_for(lambda: wstatus(wrong_anchors)["refused"].get("anchor_hash_mismatch", 0) >= 2
                           and wstatus(wrong_dim)["refused"].get("dim_mismatch", 0) >= 2
                           and wstatus(teacher)["refused"].get("anchor_hash_mismatch", 0) >= 1
                           and wstatus(teacher)["refused"].get("dim_mismatch", 0) >= 1,
                           "both students and the teacher to refuse each other's messages")
            a, d = wstatus(wrong_anchors), wstatus(wrong_dim)
            assert a["state"] == d["state"] == "waiting" and "teacher" not in a and "teacher" not in d
            assert "anchor files differ" in a["last_refusal"]["detail"]
            assert a["last_refusal"]["from"] == teacher.identity.node_id_hex
            assert "2048-d" in d["last_refusal"]["detail"] and "1024-d" in d["last_refusal"]["detail"]
            counters = await query(wrong_dim.config.control.socket, "workers")
            assert counters[0]["metrics"]["refused.dim_mismatch"] >= 2
            with pytest.raises(ControlError, match="cannot classify yet"):
                await query(wrong_anchors.config.control.socket, "classify", texts=["good"], timeout=30)
            with pytest.raises(ControlError, match="no running worker named 'nope'"):
                await query(wrong_anchors.config.control.socket, "classify", texts=["good"], worker="nope")


@aio
async def test_a_student_picks_the_better_of_two_teachers_or_the_one_it_is_told(world, tmp_path) -> None:
    useless = make_node(world, tmp_path, "teacher", teacher_settings(world, train_data=str(world["train_shuffled"])),
                        seed=8)
    good = make_node(world, tmp_path, "other", teacher_settings(world), seed=9)
    async with running(useless, good):
        peers = [f"127.0.0.1:{useless.port}", f"127.0.0.1:{good.port}"]
        picky = make_node(world, tmp_path, "gpt2", student_settings(world, "gpt2"), static=peers, seed=10)
        pinned = make_node(world, tmp_path, "llama", student_settings(
            world, "llama", teacher=useless.identity.node_id_hex[:12]), static=peers, seed=11)
        async with running(picky, pinned):
            await wait_for(lambda: len(wstatus(picky)["candidates"]) == 2
                           and wstatus(picky)["teacher"] == good.identity.node_id_hex
                           and wstatus(pinned)["state"] == "adopted",
                           "the eval set to decide between the two teachers")
            p, q = wstatus(picky), wstatus(pinned)
            by_teacher = {c["teacher"]: c["accuracy"] for c in p["candidates"]}
            assert by_teacher[good.identity.node_id_hex] >= 0.8
            assert abs(by_teacher[useless.identity.node_id_hex] - 0.5) < CHANCE_MARGIN
            assert q["teacher"] == useless.identity.node_id_hex and abs(q["accuracy"] - 0.5) < CHANCE_MARGIN
            assert pinned.workers()[0]["metrics"]["ignored.other_teacher"] >= 1


# ------------------------------------------------------------------------------------------ baselines


@pytest.fixture(scope="module")
def embedded(world) -> dict[str, Any]:
    anchors = load_anchor_set(world["anchors"])
    train_texts, train_labels = synthetic(300, 1)
    eval_texts, eval_labels = synthetic(300, 3)
    out: dict[str, Any] = {"anchors": anchors, "train_labels": np.array(train_labels),
                           "eval_labels": np.array(eval_labels)}
    for kind in ("bert", "gpt2"):
        emb = Embedder.from_spec(world["models"][kind], device="cpu")
        out[kind] = {name: emb.embed(texts) for name, texts in
                     (("anchors", anchors.texts), ("train", train_texts), ("eval", eval_texts))}
    return out


@pytest.mark.parametrize("alignment", ["anchor-labels", "ridge"])
def test_untrained_students_stay_near_chance_where_taught_ones_do_not(embedded, alignment) -> None:
    space, t, s = Space(seed=7, dim=DIM), embedded["bert"], embedded["gpt2"]
    y_eval = embedded["eval_labels"]

    def student_accuracy(labels: np.ndarray) -> float:
        teacher = fit_teacher(space, 0.3, t["anchors"], embedded["anchors"].hash, t["train"], labels, CLASSES,
                              probe="ridge", forms=["linear", "predictions"], predictions="soft")
        fit = fit_student(alignment, space, 0.3, s["anchors"], knowledge=teacher.forms,
                          teacher_anchors=teacher.anchor_trits)
        return float((fit.predict(s["eval"]) == y_eval).mean())

    taught = student_accuracy(embedded["train_labels"])
    shuffled = student_accuracy(np.random.default_rng(0).permutation(embedded["train_labels"]))
    assert taught >= 0.8 and abs(shuffled - 0.5) < CHANCE_MARGIN, (taught, shuffled)


def test_the_teachers_probe_without_a_map_is_near_chance_on_another_model(embedded) -> None:
    space, t, s = Space(seed=7, dim=DIM), embedded["bert"], embedded["gpt2"]
    teacher = fit_teacher(space, 0.3, t["anchors"], embedded["anchors"].hash, t["train"], embedded["train_labels"],
                          CLASSES, probe="ridge", forms=["linear"], predictions="soft")
    # same space, same seed: but the student's embedding axes mean something else
    own = space.encode(s["eval"], center=s["anchors"].mean(axis=0))
    acc = float((teacher.linear.predict(own) == embedded["eval_labels"]).mean())
    assert abs(acc - 0.5) < CHANCE_MARGIN, acc


# ------------------------------------------------------------------------------------------ sans-IO checks


@pytest.fixture
def exp() -> Expectation:
    texts = [f"text {i}" for i in range(50)]
    return Expectation("keywords", Space(seed=7, dim=256), "a", len(texts), anchor_hash(texts))


def _roundtrip(body: Any) -> Any:
    """Through the real encoder and decoder, as a student would receive it."""
    return decode_packet(encode_packet(body, Signer.from_seed(bytes(32)))).body


def test_anchor_chunks_stay_small_and_reassemble_in_any_order(exp) -> None:
    trits = np.random.default_rng(0).integers(-1, 2, size=(50, 256), dtype=np.int8)
    digest = content_digest(exp, trits, [])
    chunks = anchor_chunks("transfer/keywords", exp, trits, digest, chunk_bytes=1024)
    assert len(chunks) == 4 and all(c.vectors.nbytes <= 1024 for c in chunks)
    asm = Assembly(b"t" * 32, digest, 50, 256, 0.0)
    for body in reversed(chunks + chunks[:1]):   # out of order, one duplicate
        asm.add_chunk(check_vectors(_roundtrip(body), exp))
    assert asm.anchors_complete and np.array_equal(asm.anchors, trits)
    assert not asm.ready_for(needs_anchors=True)   # anchors alone are not knowledge


def test_knowledge_round_trips_and_binds_to_space_and_anchor_set(exp) -> None:
    rng = np.random.default_rng(1)
    linear = LinearKnowledge(CLASSES, rng.normal(size=(2, 256)).astype(np.float32), np.zeros(2, np.float32))
    preds = PredictionKnowledge(CLASSES, np.full((50, 2), 0.5, np.float32), exp.anchor_hash, "teacher")
    bodies = knowledge_bodies("transfer/keywords", exp, {"linear": linear, "predictions": preds}, half=False,
                              info={"model": "bert"})
    bodies = with_digest(bodies, content_digest(exp, None, bodies))
    offers = [check_knowledge(_roundtrip(b), exp) for b in bodies]
    assert [o.form for o in offers] == ["linear", "predictions"] and offers[0].info == {"model": "bert"}
    np.testing.assert_array_equal(offers[0].knowledge.weight, linear.weight)
    other_space = Expectation(exp.task, Space(seed=8, dim=256), exp.anchor_set, exp.anchor_count, exp.anchor_hash)
    with pytest.raises(TransferRefused) as e:
        check_knowledge(bodies[0], other_space)
    assert e.value.code == "space_mismatch" and "seed 7" in e.value.detail
    other_task = Expectation("sentiment", exp.space, exp.anchor_set, exp.anchor_count, exp.anchor_hash)
    with pytest.raises(TransferRefused, match="task"):
        check_knowledge(bodies[1], other_task)
    # a weight that does not fit the space it claims
    bad = Knowledge(topic="transfer/keywords", task="keywords", form="linear", classes=CLASSES,
                    weight=Tensor.from_array(np.ones((2, 128), np.float32)), anchor_hash=exp.anchor_hash,
                    meta={**bodies[0].meta})
    with pytest.raises(TransferRefused) as e:
        check_knowledge(_roundtrip(bad), exp)
    assert e.value.code == "dim_mismatch"


def test_hostile_chunks_and_hellos_are_refused_before_allocation(exp) -> None:
    trits = np.zeros((10, 256), np.int8)
    digest = bytes(16)
    (body,) = anchor_chunks("transfer/keywords", Expectation(exp.task, exp.space, "a", 10, exp.anchor_hash),
                            trits, digest, 1 << 20)
    base = {**body.meta, "anchor_count": 50}
    assert check_vectors(Vectors(body.topic, body.vectors, meta={**base, "start": 40}), exp).start == 40
    for meta, code in (({**base, "start": 45}, "bad_chunk"),            # rows past the receiver's N
                       ({**base, "start": -1}, "bad_chunk"),
                       ({**base, "anchor_count": 10**9}, "anchor_count_mismatch"),
                       ({**base, "digest": b"x"}, "bad_meta"),
                       ({**base, "kind": "weights"}, "bad_meta"),
                       ({**base, "task": "other"}, "task_mismatch"),
                       ({**base, "anchor_hash": bytes(32)}, "anchor_hash_mismatch")):
        with pytest.raises(TransferRefused) as e:
            check_vectors(Vectors(body.topic, body.vectors, meta=meta), exp)
        assert e.value.code == code, meta
    wrong_space = VectorBlock.from_trits(np.zeros((1, 256), np.int8), b"another space")
    with pytest.raises(TransferRefused, match="space"):
        check_vectors(Vectors(body.topic, wrong_space, meta={**base, "start": 0}), exp)
    hello = check_vectors(_roundtrip(student_hello("transfer/keywords", exp, "anchors")), exp)
    assert hello.wants == "anchors" and hello.adopted is None
    with pytest.raises(TransferRefused, match="no vectors"):
        check_vectors(Vectors(body.topic, body.vectors, meta={**exp.meta("student"), "wants": "anchors"}), exp)


# ------------------------------------------------------------------------------------------ settings, files


def test_settings_are_checked_up_front_with_the_key_named(world) -> None:
    assert load_worker_class("transfer").type_name == "transfer"
    ok = parse_settings("x", student_settings(world, "gpt2"))
    assert ok.alignment == "anchor-labels" and ok.topic == "transfer/keywords" and ok.needs_anchors is False
    for bad, match in (({"role": "judge"}, "role"),
                       ({"alignment": "magic"}, "alignment"),
                       ({"train_data": "x"}, "only for role 'teacher'"),
                       ({"dim": "big"}, "dim: expected int"),
                       ({"task": "a b"}, "task"),
                       ({"colour": 1}, "unknown key")):
        with pytest.raises(WorkerSettingsError, match=match):
            parse_settings("x", {**student_settings(world, "gpt2"), **bad})
    with pytest.raises(WorkerSettingsError, match="train_data: required"):
        parse_settings("x", {**student_settings(world, "gpt2"), "role": "teacher"})
    with pytest.raises(WorkerSettingsError, match="knowledge"):
        parse_settings("x", teacher_settings(world, knowledge=["linear", "weights"]))


def test_anchor_files_are_bounded_and_hashed_in_order(tmp_path) -> None:
    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    (tmp_path / "b.jsonl").write_text('{"text": "one", "label": 1}\n{"text": "two"}\n')
    a, b = load_anchor_set(tmp_path / "a.txt"), load_anchor_set(tmp_path / "b.jsonl", name="a")
    assert a.texts == ("one", "two") and a.hash == b.hash and a.name == "a"
    (tmp_path / "c.txt").write_text("two\none\n")
    assert load_anchor_set(tmp_path / "c.txt").hash != a.hash
    with pytest.raises(AnchorSetError, match="more than 1"):
        load_anchor_set(tmp_path / "a.txt", max_texts=1)
    (tmp_path / "d.jsonl").write_text('{"label": 1}\n')
    with pytest.raises(AnchorSetError, match="d.jsonl:1"):
        load_anchor_set(tmp_path / "d.jsonl")


# ------------------------------------------------------------------------------------------ control API


@aio
async def test_control_classify_checks_its_arguments_and_names_what_is_missing(tmp_path) -> None:
    from meshnode.control import ControlServer

    class Classifier:
        def status(self) -> dict[str, Any]:
            return {}

        async def classify(self, texts: list[str], worker: str | None = None) -> dict[str, Any]:
            if worker == "busy":
                raise ControlError("worker busy cannot classify yet (waiting)")
            return {"labels": [t.upper() for t in texts], "worker": worker}

    class Plain:
        def status(self) -> dict[str, Any]:
            return {}

    async with ControlServer(tmp_path / "a" / "c.sock", Classifier()) as server:
        assert await query(server.path, "classify", texts=["x", "y"]) == {"labels": ["X", "Y"], "worker": None}
        assert (await query(server.path, "classify", texts=["x"], worker="w"))["worker"] == "w"
        for args, match in (({}, "non-empty list"), ({"texts": "x"}, "non-empty list"),
                            ({"texts": [1]}, "non-empty list"), ({"texts": ["x"], "worker": 3}, "worker"),
                            ({"texts": ["x"], "worker": "busy"}, "cannot classify yet")):
            with pytest.raises(ControlError, match=match):
                await query(server.path, "classify", **args)
        assert await query(server.path, "status") == {}    # the connection-level commands still answer
    async with ControlServer(tmp_path / "b" / "c.sock", Plain()) as server:
        with pytest.raises(ControlError, match="does not serve 'classify'"):
            await query(server.path, "classify", texts=["x"])


def test_every_setting_is_documented() -> None:
    from meshnode.workers.transfer_settings import SETTINGS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "WORKERS.md").read_text()
    section = doc.split("## transfer", 1)[1]
    assert [k for k in SETTINGS if f"| `{k}` |" not in section] == []
