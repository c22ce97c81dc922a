"""Matching cells to archetypes, the matching metrics and the contrastive loss."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bundle.losses import MultiViewNTXentLoss
from bundle.match import matching_metrics, nearest_archetype


def test_nearest_archetype_is_the_most_similar_in_one_matrix_product():
    archetypes = torch.eye(3)
    queries = F.normalize(torch.tensor([[0.1, 0.9, 0.0], [0.0, 0.2, 1.0]]), dim=1)
    index, distance = nearest_archetype(queries, archetypes)
    assert index.tolist() == [1, 2]
    assert torch.all(distance >= 0) and float(distance[1]) < 0.05


def test_metrics_of_a_perfect_matcher_are_one():
    gallery = torch.eye(4)
    m = matching_metrics(gallery.repeat(2, 1), torch.arange(4).repeat(2), gallery, torch.arange(4))
    assert m == {"map": 1.0, "top1": 1.0, "top3": 1.0}


def test_map_is_the_mean_reciprocal_rank_of_the_one_relevant_cell():
    gallery = torch.eye(4)
    # query 0 ranks its cell first; query 1 ranks its cell (1) third behind cells 3 and 2
    q = torch.stack([gallery[0], F.normalize(torch.tensor([0.0, 0.2, 0.5, 0.8]), dim=0)])
    m = matching_metrics(q, torch.tensor([0, 1]), gallery, torch.arange(4))
    assert m["map"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["top1"] == pytest.approx(0.5)
    assert m["top3"] == pytest.approx(1.0)


def test_ties_count_against_the_query():
    gallery = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    m = matching_metrics(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), gallery, torch.tensor([0, 1]))
    assert m["top1"] == 0.0


def test_ntxent_prefers_views_of_one_cell_together():
    cells = torch.tensor([0, 0, 1, 1, 2, 2])
    together = F.normalize(torch.eye(3).repeat_interleave(2, 0) + 0.01, dim=1)
    shuffled = together[torch.tensor([0, 2, 1, 4, 3, 5])]
    loss = MultiViewNTXentLoss(temperature=0.1)
    assert float(loss(together, cells)) < float(loss(shuffled, cells))


def test_ntxent_with_two_views_equals_simclr_cross_entropy():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(8, 5), dim=1)
    cells = torch.arange(4).repeat_interleave(2)
    logits = z @ z.T / 0.5
    logits.fill_diagonal_(float("-inf"))
    partner = torch.arange(8) ^ 1
    assert float(MultiViewNTXentLoss(0.5)(z, cells)) == pytest.approx(float(F.cross_entropy(logits, partner)), rel=1e-5)


def test_ntxent_rejects_a_cell_with_a_single_view():
    with pytest.raises(ValueError, match="two views"):
        MultiViewNTXentLoss()(F.normalize(torch.randn(3, 4), dim=1), torch.tensor([0, 0, 1]))


# two ranks each train on half of a batch of 8 cells x 2 views; rank 0 also computes the whole batch in one process
TWO_RANKS_OF_ONE_BATCH = """
import copy, torch, torch.distributed as dist, torch.nn.functional as F
from bundle.losses import MultiViewNTXentLoss
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
net, x, cells = torch.nn.Linear(6, 4), torch.randn(16, 6), torch.arange(8).repeat(2)
loss = MultiViewNTXentLoss(0.5)
ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(net))
mine = (cells // 4) == rank  # this rank's four cells, both views of each
shared = loss(F.normalize(ddp(x[mine]), dim=1), cells[mine])
shared.backward()
shared, grads = float(shared), [p.grad.clone() for p in ddp.module.parameters()]
del ddp
dist.barrier()  # both ranks done before the group goes: a rank that leaves first may abort the other
dist.destroy_process_group()
if rank == 0:  # the whole batch in one process, as without torchrun
    whole = loss(F.normalize(net(x), dim=1), cells)
    whole.backward()
    assert abs(shared - float(whole)) < 1e-6, (shared, float(whole))
    for mine_grad, p in zip(grads, net.parameters()):
        assert torch.allclose(mine_grad, p.grad, atol=1e-6), (mine_grad, p.grad)
    print("the same loss and gradients")
"""


@pytest.mark.slow
def test_two_ranks_under_torchrun_get_the_loss_and_gradients_of_their_whole_batch_in_one_process(tmp_path):
    # each view meets the negatives of every rank's batch: without that, two GPUs of 16 cells would train with the
    # negatives of 16, not of the 32 one GPU sees, and the contrastive loss (and what it teaches) would change
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS_OF_ONE_BATCH)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                             "--nproc_per_node=2", str(script)], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "the same loss and gradients" in result.stdout


def test_an_image_whose_cells_match_the_bank_poorly_is_flagged_by_its_median_match_distance():
    from bundle.match import UNLIKE_THE_BANK, unlike_the_bank

    assert unlike_the_bank([0.2, 0.25, 0.3, 0.9]) is None  # tissue: a few poor matches do not flag it
    assert 0.55 > UNLIKE_THE_BANK and unlike_the_bank([0.5, 0.6, 0.55]) == pytest.approx(0.55)
    assert unlike_the_bank([]) is None
