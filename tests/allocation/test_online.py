import numpy as np
import pytest

from ttc.allocation import bins as bins_lib, online, selection


def _records(method, budget, correct_by_uid):
  return [{"uid": u, "level": 1, "method": method, "budget": budget, "seed": 0,
           "correct": bool(c)} for u, c in correct_by_uid.items()]


@pytest.fixture
def questions():
  uids = [f"q{i:02d}" for i in range(40)]
  bins = bins_lib.quantile_bins({u: 1 - i / 40 for i, u in enumerate(uids)})
  return uids, bins, bins_lib.halves(bins)


def test_online_allocation_charges_its_probe_to_the_budget(questions):
  uids, bins, halves = questions
  cheap = {u: i % 2 for i, u in enumerate(uids)}
  table, _ = selection.build_table(_records("cheap", 4, cheap)
                                   + _records("full", 8, {u: 1 for u in uids}), bins, halves)
  stat = np.linspace(1, 0, len(uids))
  # A budget of 8 with a probe of 4 leaves 4: "full" (cost 8) no longer fits.
  at8 = online.online(table, [8, 12], stat, probe=4)
  names = np.array([m for m, _ in table.configs])
  assert set(names[at8.choice_BxHxK[0].ravel()]) == {"cheap"}
  assert at8.value_BxQ[0] == pytest.approx([cheap[u] for u in table.uids])
  assert set(names[at8.choice_BxHxK[1].ravel()]) == {"full"}
  # Without room for the probe there is nothing to run.
  assert np.isnan(online.online(table, [4], stat, probe=4).value_BxQ).all()
  # With probe 0 and the pass@1-ordered statistic it is the offline selection.
  offline = selection.two_fold(table, [8, 12], cheaper=True)
  assert np.array_equal(online.online(table, [8, 12], stat, probe=0).value_BxQ,
                        offline.value_BxQ)


def test_probe_bins_come_from_the_probe_scores():
  scores = [[0.9, 0.8, 0.0], [0.1, 0.2, 1.0], [0.5, 0.5, 0.5]]
  stat = online.probe_statistic(scores, probe=2)
  assert stat == pytest.approx([0.85, 0.15, 0.5])
  got = online._probe_bins(stat, np.ones(3, bool), num_bins=3)
  assert got.tolist() == [1, 3, 2]
  with pytest.raises(ValueError, match="needs 4 samples"):
    online.probe_statistic(scores, probe=4)


def test_one_global_budget_moves_compute_to_the_bins_it_helps(questions):
  uids, bins, halves = questions
  # Bins 1-2 are solved at 4 generations; bins 3-5 need 16.
  records = (_records("m", 4, {u: bins[u] <= 2 for u in uids})
             + _records("m", 16, {u: 1 for u in uids}))
  table, _ = selection.build_table(records, bins, halves)
  # Mean budget 11.2 = (2 x 4 + 3 x 16) / 5: the easy bins keep 4, the hard ones get 16.
  chosen, spent = online.global_budget(table, [11.2, 4])
  assert chosen.value_BxQ[0] == pytest.approx(np.ones(len(uids)))
  assert spent[0].tolist() == [[4, 4, 16, 16, 16]] * 2
  # The same mean budget for every question buys no 16 anywhere.
  uniform = selection.two_fold(table, [11.2], cheaper=True)
  assert selection.weighted_mean(uniform.value_BxQ)[0] == 0.4
  # A total too small for the cheapest configuration everywhere gives nothing more.
  assert selection.weighted_mean(chosen.value_BxQ)[1] == pytest.approx(0.4)


def test_frontier_keeps_only_configurations_worth_buying():
  cost = np.array([4, 8, 16, 16, 64])
  acc = np.array([0.5, 0.52, 0.7, 0.6, 0.71])
  # 8 is under the chord 4 -> 16; 16 at 0.6 is worse than 16 at 0.7.
  assert online._frontier(cost, acc) == [0, 2, 4]
