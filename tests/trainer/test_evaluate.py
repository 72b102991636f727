import numpy as np
import pytest
import torch

from trainer.evaluate import blocked_metrics, global_cosine, rank_metrics


def reference_metrics(sim, qp, gp):
    """Per-query loops, the textbook definitions (ties: lower gallery index first)."""
    r = {1: [], 5: [], 10: []}
    aps, inps = [], []
    for row, pid in zip(sim, qp):
        order = sorted(range(len(row)), key=lambda g: (-row[g], g))
        hits = [gp[g] == pid for g in order]
        for k in r:
            r[k].append(any(hits[:k]))
        pos = [i + 1 for i, h in enumerate(hits) if h]
        if pos:
            aps.append(np.mean([(j + 1) / rank for j, rank in enumerate(pos)]))
            inps.append(len(pos) / pos[-1])
    return {"R1": 100 * np.mean(r[1]), "R5": 100 * np.mean(r[5]), "R10": 100 * np.mean(r[10]),
            "mAP": 100 * np.mean(aps), "mINP": 100 * np.mean(inps)}


@pytest.mark.parametrize("q,n,people,block", [(37, 53, 9, 8), (5, 3, 2, 512), (64, 129, 40, 7)])
def test_matches_reference(q, n, people, block):
    rng = np.random.default_rng(q * n)
    sim = rng.standard_normal((q, n)).astype(np.float32)
    qp, gp = rng.integers(0, people, q), rng.integers(0, people, n)
    gp[: people] = np.arange(people)[: n]  # most queries have a positive
    got = rank_metrics(sim, qp, gp, block_size=block)
    want = reference_metrics(sim, qp, gp)
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-4), k


def test_ties_rank_lower_index_first():
    sim = np.zeros((1, 4), np.float32)  # all tied
    assert rank_metrics(sim, [7], [1, 7, 7, 2])["R1"] == 0.0
    assert rank_metrics(sim, [7], [7, 1, 1, 2])["R1"] == 100.0
    ap = rank_metrics(sim, [7], [1, 7, 7, 2])["mAP"]
    assert ap == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)


def test_perfect_and_worst():
    pids = np.arange(6)
    assert rank_metrics(np.eye(6), pids, pids) == {"R1": 100.0, "R5": 100.0, "R10": 100.0,
                                                   "mAP": 100.0, "mINP": 100.0}
    worst = rank_metrics(-np.eye(6), pids, pids)
    assert worst["R1"] == 0.0 and worst["R5"] == 0.0 and worst["R10"] == 100.0
    assert worst["mAP"] == pytest.approx(100 / 6)


def test_query_without_positive_is_a_miss_but_not_in_map():
    sim = np.array([[0.9, 0.1], [0.9, 0.1]], np.float32)
    m = rank_metrics(sim, [0, 5], [0, 1])
    assert m["R1"] == 50.0 and m["mAP"] == 100.0


def test_blocked_set_scores_equal_full_matrix():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(50, 3, 16), dim=-1)
    g = torch.nn.functional.normalize(torch.randn(31, 3, 16), dim=-1)
    qp, gp = torch.randint(0, 10, (50,)).numpy(), torch.arange(31).numpy() % 10
    assert blocked_metrics(q, qp, g, gp, block_size=7) == pytest.approx(
        rank_metrics(global_cosine(q, g), qp, gp))


def test_bad_input():
    with pytest.raises(ValueError, match="empty gallery"):
        rank_metrics(np.zeros((2, 0)), [1, 2], [])
    with pytest.raises(ValueError, match="does not match"):
        rank_metrics(np.zeros((2, 3)), [1, 2], [1, 2])
    with pytest.raises(ValueError, match="no queries"):
        rank_metrics(np.zeros((0, 3)), [], [1, 2, 3])


def test_adaptive_margin_damps_hubs_and_streams_exactly():
    from trainer.evaluate import adaptive_margin
    torch.manual_seed(1)
    centre = torch.nn.functional.normalize(torch.randn(8), dim=0)
    bank = torch.nn.functional.normalize(centre + 0.7 * torch.randn(300, 1, 8), dim=-1)
    gallery = torch.nn.functional.normalize(torch.randn(20, 1, 8), dim=-1)
    gallery[7, 0] = centre  # near every query of the bank: a hub
    margin = adaptive_margin(bank, gallery, global_cosine, k=10, beta=0.5, block_size=37)
    assert margin.shape == (20,) and margin.argmax().item() == 7
    full = global_cosine(bank, gallery).topk(10, dim=0).values.mean(0)
    assert torch.allclose(margin, 0.5 * full)
    with pytest.raises(ValueError, match="smaller than k"):
        adaptive_margin(bank[:5], gallery, global_cosine, k=10)


def test_margin_is_sliced_with_the_gallery_chunks():
    torch.manual_seed(2)
    q = torch.nn.functional.normalize(torch.randn(40, 2, 8), dim=-1)
    g = torch.nn.functional.normalize(torch.randn(23, 2, 8), dim=-1)
    qp, gp = torch.randint(0, 6, (40,)).numpy(), torch.arange(23).numpy() % 6
    margin = torch.rand(23)
    chunked = blocked_metrics(q, qp, g, gp, global_cosine, margin, block_size=9, gallery_block=5)
    assert chunked == pytest.approx(rank_metrics(global_cosine(q, g) - margin, qp, gp))
    assert chunked != pytest.approx(rank_metrics(global_cosine(q, g), qp, gp))
