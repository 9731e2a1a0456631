"""The trainer worker end to end: tiny random BERT + LoRA on loopback daemons.

Nodes train on their own shards of a synthetic keyword task, sync their adapters every few steps and
must end each round with bit-identical adapters (the digest in each round's record is a SHA-256 of
the synchronised adapter's float32 bytes; the checkpoints are compared tensor by tensor too)."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from safetensors.numpy import load_file  # noqa: E402

from meshnode import identity as idm  # noqa: E402
from meshnode.control import query  # noqa: E402
from meshnode.node import Node  # noqa: E402
from meshnode.workers.base import WorkerSettingsError  # noqa: E402
from meshnode.workers.trainer import CHECKPOINT, ROUNDS_LOG  # noqa: E402

from .._mesh import aio, node_config, running, wait_for  # noqa: E402
from ._text import synthetic, tokenizer, write_dataset  # noqa: E402

pytestmark = pytest.mark.timeout(180)

NAMES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("trainer")
    ca = idm.init_mesh(root / "mesh")
    ids = {n: idm.init_node(root / "ids" / n, ca, n) for n in NAMES}
    models = {}
    for name, seed in (("bert", 0), ("bert-other", 1)):
        torch.manual_seed(seed)
        cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, max_position_embeddings=64)
        transformers.AutoModel.from_config(cfg).save_pretrained(root / "models" / name)
        tokenizer("bert").save_pretrained(root / "models" / name)
        models[name] = str(root / "models" / name)
    shards = {}
    for i, n in enumerate(NAMES):
        shards[n] = write_dataset(root / "data" / n, "train", *synthetic(120, 10 + i))
    evaluation = write_dataset(root / "eval", "dev", *synthetic(100, 3))
    return {"root": root, "ids": ids, "models": models, "shards": shards, "eval": evaluation}


def settings(world: dict[str, Any], name: str, **over: Any) -> dict[str, Any]:
    return {"task": "keywords", "model": world["models"]["bert"], "train_data": str(world["shards"][name]),
            "eval_data": str(world["eval"]), "lora_rank": 4, "lora_targets": ["query", "value"], "lr": 5e-3,
            "batch_size": 8, "max_length": 16, "steps_per_round": 2, "rounds": 3, "codec": "fp32",
            "round_deadline": 20.0, "hello_interval": 0.2, "member_timeout": 5.0, "join_wait": 0.2,
            "device": "cpu", "threads": 1, "chunk_bytes": 4096, **over}


def make_node(world: dict[str, Any], tmp: Path, name: str, worker: dict[str, Any], *,
              static: list[str] | None = None, seed: int = 0) -> Node:
    cfg = node_config(tmp / name, world["ids"][name], static=static,
                      workers=[{"name": "lora", "type": "trainer", "settings": worker}])
    return Node(cfg, world["ids"][name], rng=random.Random(seed))


def wstatus(node: Node) -> dict[str, Any]:
    (entry,) = node.workers()
    assert entry["state"] == "running" and entry["status"]["state"] != "failed", entry
    return entry["status"]


def checkpoint(node: Node) -> dict[str, np.ndarray]:
    return load_file(str(node.config.node.data_dir / "workers" / "lora" / CHECKPOINT))


def bases(node: Node) -> dict[int, str]:
    return {r["round"]: r["base"] for r in wstatus(node)["history"]}


async def start_group(world, tmp, names, **over) -> list[Node]:
    first = make_node(world, tmp, names[0], settings(world, names[0], min_peers=len(names) - 1, **over), seed=1)
    await first.start()
    peer = [f"127.0.0.1:{first.port}"]
    rest = [make_node(world, tmp, n, settings(world, n, min_peers=len(names) - 1, **over), static=peer, seed=i + 2)
            for i, n in enumerate(names[1:])]
    for n in rest:
        await n.start()
    return [first, *rest]


@aio
async def test_two_nodes_end_every_round_with_bit_identical_fp32_adapters(world, tmp_path) -> None:
    nodes = await start_group(world, tmp_path, ["a", "b"])
    try:
        await wait_for(lambda: all(wstatus(n)["state"] == "done" for n in nodes), "both nodes to finish 3 rounds",
                       timeout=120)
        sa, sb = (wstatus(n) for n in nodes)
        assert sa["round"] == sb["round"] == 3
        assert [r["merged"] for r in sa["history"]] == [2, 2, 2] == [r["merged"] for r in sb["history"]]
        assert bases(nodes[0]) == bases(nodes[1]) and sa["base"] == sb["base"]
        assert len(set(bases(nodes[0]).values())) == 3          # the adapter moved every round
        ca, cb = checkpoint(nodes[0]), checkpoint(nodes[1])
        assert set(ca) == set(cb) and any(k.startswith("adapter/") for k in ca)
        for k in ca:
            np.testing.assert_array_equal(ca[k], cb[k])
        last = sa["last_round"]
        assert last["codec"] == "fp32" and last["rel_error"] == 0.0 and 0.0 <= last["accuracy"] <= 1.0
        assert sa["chunks"] > 1 and last["bytes_sent"] > 4 * sa["trainable"]   # fp32, several packets
        assert last["bytes_received"] >= last["bytes_sent"] * 0.9
        assert sa["members"].keys() == {nodes[1].identity.node_id_hex}
        # the control API shows the same status, and the rounds are logged
        workers = await query(nodes[0].config.control.socket, "workers")
        assert workers[0]["status"]["base"] == sa["base"] and workers[0]["metrics"]["rounds"] == 3
        log = (nodes[0].config.node.data_dir / "workers" / "lora" / ROUNDS_LOG).read_text().splitlines()
        assert len(log) == 3
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))


@aio
async def test_three_nodes_with_ternary_error_feedback_apply_the_same_merged_update(world, tmp_path) -> None:
    nodes = await start_group(world, tmp_path, ["a", "b", "c"], codec="ternary-ef", block=64, rounds=3,
                              chunk_bytes=1 << 20)
    try:
        await wait_for(lambda: all(wstatus(n)["state"] == "done" for n in nodes), "three nodes to finish",
                       timeout=120)
        statuses = [wstatus(n) for n in nodes]
        assert all([r["merged"] for r in s["history"]] == [3, 3, 3] for s in statuses), [s["history"] for s in statuses]
        assert bases(nodes[0]) == bases(nodes[1]) == bases(nodes[2])
        ckpts = [checkpoint(n) for n in nodes]
        for k in (k for k in ckpts[0] if k.startswith("adapter/")):
            np.testing.assert_array_equal(ckpts[0][k], ckpts[1][k])
            np.testing.assert_array_equal(ckpts[0][k], ckpts[2][k])
        # every node keeps its own error-feedback residual (what it did not send yet)
        assert any(k.startswith("residual/") for k in ckpts[0])
        last = statuses[0]["last_round"]
        assert 0.0 < last["rel_error"] < 1.0 and last["encodings"] in (["base3"], ["dense2"])
        # one chunk of ternary data: well under a quarter of the fp32 bytes
        assert statuses[0]["chunks"] == 1 and last["bytes_sent"] < statuses[0]["trainable"]
    finally:
        await asyncio.gather(*(n.stop() for n in nodes))


@aio
async def test_another_adapter_schema_is_refused_and_another_base_model_ignored(world, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    a = make_node(world, tmp_path, "a", settings(world, "a", rounds=2, join_wait=1.0), seed=1)
    async with running(a):
        peer = [f"127.0.0.1:{a.port}"]
        b = make_node(world, tmp_path, "b", settings(world, "b", rounds=2, lora_rank=8, join_wait=1.0), static=peer,
                      seed=2)
        c = make_node(world, tmp_path, "c", settings(world, "c", rounds=2, join_wait=1.0,
                                                     model=world["models"]["bert-other"]), static=peer, seed=3)
        async with running(b, c):
            await wait_for(lambda: all(wstatus(n)["state"] == "done" for n in (a, b, c))
                           and wstatus(a)["refused"].get("schema_mismatch", 0) >= 1
                           and wstatus(b)["refused"].get("schema_mismatch", 0) >= 1,
                           "all to train alone, a and b refusing each other")
            sa, sb, sc = wstatus(a), wstatus(b), wstatus(c)
            for s in (sa, sb, sc):
                assert [r["merged"] for r in s["history"]] == [1, 1] and s["members"] == {}
            assert sa["group"] == sb["group"] != sc["group"] and sa["schema"] != sb["schema"]
            assert sa["last_refusal"]["from"] == b.identity.node_id_hex
            assert "LoRA rank" in sb["last_refusal"]["detail"]
            assert sc["refused"] == {} and c.workers()[0]["metrics"]["ignored.other_group"] >= 1
    refusals = [r.getMessage() for r in caplog.records if "schema_mismatch" in r.getMessage()]
    assert len(refusals) >= 2   # in both logs, once per peer


@aio
async def test_a_node_stopped_mid_round_resumes_from_its_checkpoint_and_rejoins(world, tmp_path) -> None:
    over = {"rounds": 0, "round_deadline": 1.0, "member_timeout": 1.0}
    a, b = await start_group(world, tmp_path, ["a", "b"], **over)
    b2 = None
    try:
        await wait_for(lambda: wstatus(b)["round"] >= 2 and wstatus(b)["state"] in ("training", "waiting"),
                       "b to be inside round 2 or later")
        await b.stop()                       # mid-round: its training or its wait is cancelled
        saved = int(load_file_meta(b)["round"])
        assert saved >= 2
        await wait_for(lambda: wstatus(a)["round"] >= saved + 3, "a to go on alone")
        alone = [r for r in wstatus(a)["history"] if r["round"] >= saved + 1]
        assert alone and all(r["merged"] == 1 for r in alone)
        b2 = make_node(world, tmp_path, "b", settings(world, "b", min_peers=1, **over), static=[f"127.0.0.1:{a.port}"],
                       seed=9)
        await b2.start()
        await wait_for(lambda: wstatus(b2)["restored"] is not None and wstatus(b2)["catchups"] >= 1,
                       "b to resume from its checkpoint and catch up")
        assert wstatus(b2)["restored"]["round"] == saved

        def joint() -> bool:
            ha = {r["round"]: r for r in wstatus(a)["history"]}
            return any(r["merged"] == 2 and ha.get(q, {}).get("merged") == 2 and ha[q]["base"] == r["base"]
                       for q, r in ((r["round"], r) for r in wstatus(b2)["history"]))
        await wait_for(joint, "a and b to merge a round together again, with identical adapters")
    finally:
        await asyncio.gather(a.stop(), *(n.stop() for n in (b2,) if n is not None))


def load_file_meta(node: Node) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(node.config.node.data_dir / "workers" / "lora" / CHECKPOINT), framework="numpy") as f:
        return f.metadata()


@aio
async def test_a_damaged_checkpoint_means_a_fresh_start_not_a_crash(world, tmp_path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    node = make_node(world, tmp_path, "d", settings(world, "d", rounds=1))
    storage = node.config.node.data_dir / "workers" / "lora"
    storage.mkdir(parents=True)
    (storage / CHECKPOINT).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(64))
    async with running(node):
        await wait_for(lambda: wstatus(node)["state"] == "done", "the node to train one round")
        s = wstatus(node)
        assert s["restored"] is None and s["round"] == 1
    assert any("cannot restore the checkpoint" in r.getMessage() for r in caplog.records)
    assert int(load_file_meta(node)["round"]) == 1   # and a good one replaced it


def test_nodes_start_from_identical_adapters_even_while_other_threads_use_the_global_rng(world) -> None:
    import threading

    from meshnode.workers.trainer_model import LoraModel
    from meshnode.workers.trainer_settings import parse_settings

    stop = threading.Event()

    def churn() -> None:   # another worker training in the same daemon
        while not stop.is_set():
            torch.rand(64)

    t = threading.Thread(target=churn)
    t.start()
    try:
        cfg = parse_settings("lora", settings(world, "a"))
        m1, m2 = LoraModel(cfg, node_id=b"\x01" * 32), LoraModel(cfg, node_id=b"\x02" * 32)
    finally:
        stop.set()
        t.join()
    a1, a2 = m1.adapter(), m2.adapter()
    assert a1.keys() == a2.keys() and any("lora_A" in k for k in a1) and any("classifier" in k for k in a1)
    for k in a1:
        np.testing.assert_array_equal(a1[k], a2[k])
    assert m1.fingerprint == m2.fingerprint
    other = LoraModel(parse_settings("lora", settings(world, "a", seed=1)), node_id=b"\x01" * 32).adapter()
    assert any(not np.array_equal(a1[k], other[k]) for k in a1)


def test_trainers_sync_under_meshnode_sim_and_the_report_carries_their_rounds(world) -> None:
    from meshnode.sim.runner import run_scenario
    from meshnode.sim.scenario import parse_scenario

    def node(name: str) -> dict[str, Any]:
        return {"name": name, "workers": [{"name": "lora", "type": "trainer", "settings": settings(
            world, name, codec="ternary-ef", rounds=3, min_peers=1, hello_interval=2.0, join_wait=1.0,
            chunk_bytes=1 << 20)}]}

    scenario = parse_scenario({"name": "trainers", "seed": 1, "nodes": [node("a"), node("b")],
                               "topology": {"kind": "full_mesh", "profile": "wifi"}, "stop": {"time": 300}})
    report = run_scenario(scenario)
    metrics = [report["nodes"][n]["workers"][0]["metrics"] for n in ("a", "b")]
    for m in metrics:
        assert m["rounds"] == 3 and m["last.merged"] == 2 and m.get("errors", 0) == 0
        assert m["bytes_sent"] > 0 and 0 < m["last.rel_error"] < 1


def test_logit_adjustment_trains_on_logits_plus_the_nodes_own_log_prior(world, tmp_path) -> None:
    from meshnode.workers.trainer_model import LoraModel
    from meshnode.workers.trainer_settings import parse_settings

    texts, labels = synthetic(200, 21)
    keep = [i for i, y in enumerate(labels) if y == 0][:90] + [i for i, y in enumerate(labels) if y == 1][:10]
    skewed = write_dataset(tmp_path / "skewed", "train", [texts[i] for i in keep], [labels[i] for i in keep])
    plain = LoraModel(parse_settings("lora", settings(world, "a", train_data=str(skewed))), node_id=b"\x01" * 32)
    balanced = LoraModel(parse_settings("lora", settings(world, "a", train_data=str(skewed), balance="logit-adjust")),
                         node_id=b"\x01" * 32)
    assert plain.log_prior is None
    np.testing.assert_allclose(balanced.log_prior, np.log(np.array([91, 11]) / 102), rtol=1e-6)
    # same start, same batches: the only difference in the first step is the prior added to the logits
    assert plain.adapter().keys() == balanced.adapter().keys()
    loss_plain, loss_balanced = plain.train(1), balanced.train(1)
    assert loss_plain != loss_balanced
    with pytest.raises(WorkerSettingsError, match="balance"):
        parse_settings("lora", settings(world, "a", balance="reweight"))


def test_an_interrupted_model_stops_training_and_predicting_at_the_next_batch(world) -> None:
    from meshnode.workers.trainer_model import LoraModel
    from meshnode.workers.trainer_settings import parse_settings

    model = LoraModel(parse_settings("lora", settings(world, "a")), node_id=b"\x01" * 32)
    model.train(2)
    assert model.steps == 2
    model.interrupt.set()   # what TrainerWorker.stop does: a daemon asked to stop must not train on for minutes
    assert np.isnan(model.train(50)) and model.steps == 2
    with pytest.raises(InterruptedError):
        model.predict(["a good film"])


def test_export_writes_an_adapter_that_peft_loads_with_the_same_predictions(world, tmp_path) -> None:
    from peft import PeftModel
    from safetensors.numpy import save_file
    from transformers import AutoModelForSequenceClassification

    from meshnode.workers.trainer_export import export_adapter
    from meshnode.workers.trainer_model import LoraModel
    from meshnode.workers.trainer_settings import parse_settings

    cfg = parse_settings("lora", settings(world, "a"))
    model = LoraModel(cfg, node_id=b"\x01" * 32)
    model.train(3)
    ckpt = tmp_path / "adapter.safetensors"
    save_file({f"adapter/{k}": v for k, v in model.adapter().items()}, str(ckpt), metadata={"round": "3"})
    info = export_adapter(cfg, ckpt, tmp_path / "out")
    assert info["round"] == 3 and info["classes"] == ["pos", "neg"]
    texts = ["great fun superb", "dull awful poor", "the movie was"]
    base = AutoModelForSequenceClassification.from_pretrained(world["models"]["bert"], num_labels=2)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "out")).eval()
    enc = model.tokenizer(texts, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
    with torch.inference_mode():
        probs = torch.softmax(loaded(**enc).logits, dim=-1).numpy()
    np.testing.assert_allclose(probs, model.predict(texts), atol=1e-5)


def test_export_without_a_checkpoint_is_one_line_and_exit_2(world, tmp_path) -> None:
    from click.testing import CliRunner

    from meshnode.cli import main

    cfg = node_config(tmp_path / "n", world["ids"]["a"], workers=[
        {"name": "lora", "type": "trainer", "settings": settings(world, "a")}])
    toml = tmp_path / "node.toml"
    toml.write_text(f'[node]\nname = "a"\ndata_dir = "{cfg.node.data_dir}"\n[identity]\nkey = "{cfg.identity.key}"\n'
                    f'cert = "{cfg.identity.cert}"\nca_cert = "{cfg.identity.ca_cert}"\n[[workers]]\nname = "lora"\n'
                    f'type = "trainer"\n[workers.settings]\ntask = "k"\nmodel = "m"\nclasses = ["a", "b"]\n')
    r = CliRunner().invoke(main, ["export", "--config", str(toml), str(tmp_path / "out")])
    assert r.exit_code == 2 and "no checkpoint yet" in r.output and len(r.output.strip().splitlines()) == 1


def test_joining_nodes_do_not_answer_each_others_hellos_back_and_forth(world) -> None:
    # Two nodes joining at once used to answer every joining hello at once, so they ping-ponged hellos at
    # link speed for the whole join_wait (~1,200 in 10 simulated seconds). An answer now waits for
    # HELLO_ANSWER_GAP_S since the node's last hello; the bound below allows one per gap plus the
    # regular ones, with room to spare.
    from meshnode.sim.runner import run_scenario
    from meshnode.sim.scenario import parse_scenario
    from meshnode.workers.trainer import HELLO_ANSWER_GAP_S

    def node(name: str) -> dict[str, Any]:
        return {"name": name, "workers": [{"name": "lora", "type": "trainer", "settings": settings(
            world, name, codec="ternary-ef", rounds=1, min_peers=1, hello_interval=5.0, join_wait=10.0,
            chunk_bytes=1 << 20)}]}

    report = run_scenario(parse_scenario({"name": "join", "seed": 2, "nodes": [node("a"), node("b")],
                                          "topology": {"kind": "full_mesh", "profile": "lan"},
                                          "stop": {"time": 30}}))
    for n in ("a", "b"):
        m = report["nodes"][n]["workers"][0]["metrics"]
        assert m["rounds"] == 1
        assert m["hellos"] <= 30 / HELLO_ANSWER_GAP_S + 30 / 5.0 + 4, m


def test_the_learning_rate_follows_the_group_round_with_warmup_and_linear_decay(world) -> None:
    from meshnode.workers.trainer_model import LoraModel
    from meshnode.workers.trainer_settings import parse_settings

    cfg = parse_settings("lora", settings(world, "a", lr=0.01, rounds=4, steps_per_round=5, warmup_rounds=1,
                                          lr_schedule="linear"))
    rates = [cfg.lr_at(s) for s in range(20)]
    # warmup over the first round's 5 steps, then a straight line to zero at step 20
    np.testing.assert_allclose(rates[:5], [0.01 * (s + 1) / 5 * (20 - s) / 20 for s in range(5)])
    np.testing.assert_allclose(rates[5:], [0.01 * (20 - s) / 20 for s in range(5, 20)])
    assert cfg.lr_at(20) == 0.0 and max(rates) < 0.01
    constant = parse_settings("lora", settings(world, "a", lr=0.01))
    assert {constant.lr_at(s) for s in (0, 7, 10_000)} == {0.01}
    # the optimizer's rate is set from the step the caller names (the group's round x steps_per_round),
    # not from how many steps this process has taken: a restarted or caught-up node uses the group's rate
    model = LoraModel(cfg, node_id=b"\x01" * 32)
    model.train(1, first_step=12)
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr_at(12))
    model.train(2, first_step=3)
    assert model.optimizer.param_groups[0]["lr"] == pytest.approx(cfg.lr_at(4))


@pytest.mark.parametrize(("over", "match"), [
    ({"lr_schedule": "cosine", "rounds": 3}, "lr_schedule"),
    ({"lr_schedule": "linear", "rounds": 0}, "set rounds"),
    ({"warmup_rounds": 3, "rounds": 3}, "warmup_rounds"),
    ({"warmup_rounds": -1}, "warmup_rounds"),
])
def test_a_bad_learning_rate_schedule_is_refused_naming_the_key(world, over, match) -> None:
    from meshnode.workers.trainer_settings import parse_settings

    with pytest.raises(WorkerSettingsError, match=match):
        parse_settings("lora", settings(world, "a", **over))


def test_grouping_by_length_keeps_an_epoch_a_permutation_and_batches_texts_of_like_length(world) -> None:
    from meshnode.workers.trainer_model import LoraModel
    from meshnode.workers.trainer_settings import parse_settings

    def model(group: bool) -> LoraModel:
        m = LoraModel(parse_settings("lora", settings(world, "a", batch_size=4, group_by_length=group)),
                      node_id=b"\x01" * 32)
        # rows of very different lengths, so that grouping has something to do
        texts = tuple("word " * (1 + (i * 7) % 23) for i in range(70))
        m.set_targets(texts, np.full((70, 2), 0.5, np.float32))
        return m

    plain, grouped = model(False), model(True)
    rows = plain.rows
    order = grouped._epoch_order(rows)
    assert sorted(order) == list(range(rows))   # every row once: nothing dropped, nothing twice

    def spread(m: LoraModel, order: list[int]) -> float:
        full = [order[j:j + 4] for j in range(0, len(order) - len(order) % 4, 4)]
        return float(np.mean([np.ptp([len(m._row(i)[0]) for i in b]) for b in full]))

    # in-batch length spread falls to a fraction of a shuffled epoch's; the batches are still shuffled
    assert spread(grouped, order) < 0.3 * spread(plain, plain._epoch_order(rows))
    lengths = [len(grouped._row(i)[0]) for i in order]
    assert lengths != sorted(lengths)
    assert np.isfinite(grouped.train(3)) and grouped.steps == 3


@aio
async def test_a_node_that_catches_up_past_the_last_round_reports_the_adapter_it_adopted(world, tmp_path) -> None:
    over = {"rounds": 3, "lr": 3e-2}
    a = make_node(world, tmp_path, "a", settings(world, "a", min_peers=0, **over), seed=1)
    await a.start()
    b = None
    try:
        await wait_for(lambda: wstatus(a)["state"] == "done", "a to finish its rounds alone", timeout=120)
        done = wstatus(a)
        assert done["accuracy"] != done["initial_accuracy"]   # else this test could not tell the two apart
        b = make_node(world, tmp_path, "b", settings(world, "b", min_peers=1, **over), static=[f"127.0.0.1:{a.port}"],
                      seed=2)
        await b.start()
        await wait_for(lambda: wstatus(b)["state"] == "done", "b to catch up to a's last round", timeout=120)
        caught = wstatus(b)
        assert caught["catchups"] == 1 and caught["round"] == 3 and caught["base"] == done["base"]
        # its accuracy is the adopted adapter's (a's, on the same eval set), not its own start's
        assert caught["accuracy"] == done["accuracy"]
    finally:
        await asyncio.gather(a.stop(), *(n.stop() for n in (b,) if n is not None))
