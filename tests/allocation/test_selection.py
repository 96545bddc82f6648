import numpy as np
import pytest

from ttc.allocation import bins as bins_lib, selection


def _records(method, budget, correct_by_uid, seed=0):
  return [{"uid": u, "level": 1, "method": method, "budget": budget, "seed": seed,
           "correct": bool(c)} for u, c in correct_by_uid.items()]


@pytest.fixture
def questions():
  uids = [f"q{i:02d}" for i in range(40)]
  bins = bins_lib.quantile_bins({u: float(i) for i, u in enumerate(uids)})
  return uids, bins, bins_lib.halves(bins)


def test_a_configuration_best_only_on_the_evaluation_half_is_never_chosen_for_it(questions):
  uids, bins, halves = questions
  # "steady": right on every other question of each half; "planted": right on all of
  # half 1 and nothing of half 0. Chosen on half 0, steady wins; chosen on half 1,
  # planted wins, and it then scores half 0, where it is always wrong.
  steady = {u: i % 2 for i, u in enumerate(uids)}
  planted = {u: halves[u] == 1 for u in uids}
  table, dropped = selection.build_table(
      _records("steady", 4, steady) + _records("planted", 4, planted), bins, halves)
  assert not dropped
  chosen = selection.two_fold(table, [4])
  names = np.array([m for m, _ in table.configs])
  assert set(names[chosen.choice_BxHxK[0, 1]]) == {"steady"}  # scored half 1, chose on 0
  assert set(names[chosen.choice_BxHxK[0, 0]]) == {"planted"}  # scored half 0, chose on 1
  value = chosen.value_BxQ[0]
  for q, u in enumerate(uids):
    assert value[q] == (steady[u] if halves[u] == 1 else 0.0)
  # Choosing on the evaluation half would have scored planted's 1.0 on half 1.
  assert selection.weighted_mean(chosen.value_BxQ)[0] == pytest.approx(
      np.mean([steady[u] for u in uids if halves[u] == 1]) / 2)


def test_budget_caps_the_candidates_and_ties_go_to_the_cheaper(questions):
  uids, bins, halves = questions
  records = (_records("cheap", 4, {u: 1 for u in uids})
             + _records("dear", 16, {u: 1 for u in uids})
             + _records("best", 64, {u: 1 for u in uids})
             + _records("worse", 4, {u: 0 for u in uids}))
  table, _ = selection.build_table(records, bins, halves)
  chosen = selection.two_fold(table, [2, 4, 16, 64], cheaper=True)
  configs = [[{table.configs[c] for c in half} for half in at] for at in chosen.choice_BxHxK]
  assert np.isnan(chosen.value_BxQ[0]).all() and (chosen.choice_BxHxK[0] == -1).all()
  for at_budget in configs[1:]:
    assert at_budget == [{("cheap", 4)}, {("cheap", 4)}]
  # By default (the paper) a budget's candidates are the configurations of that cost.
  exact = selection.two_fold(table, [4, 16, 64])
  assert [{table.configs[c] for c in exact.choice_BxHxK[i].ravel()} for i in range(3)] == [
      {("cheap", 4)}, {("dear", 16)}, {("best", 64)}]
  # A method outside the candidates is never chosen, even when it is the only one left.
  only = selection.two_fold(table, [64], candidates={"worse", "best"}, cheaper=True)
  assert {table.configs[c] for c in only.choice_BxHxK.ravel()} == {("best", 64)}


def test_each_bin_chooses_its_own_configuration(questions):
  uids, bins, halves = questions
  easy = {u: bins[u] <= 2 for u in uids}
  hard = {u: bins[u] > 2 for u in uids}
  table, _ = selection.build_table(_records("easy_method", 4, easy)
                                   + _records("hard_method", 4, hard), bins, halves)
  chosen = selection.two_fold(table, [4])
  for half in (0, 1):
    names = [table.configs[c][0] for c in chosen.choice_BxHxK[0, half]]
    assert names == ["easy_method"] * 2 + ["hard_method"] * 3
  assert (chosen.value_BxQ == 1).all()


def test_seeds_average_first_and_incomplete_configurations_are_left_out(questions):
  uids, bins, halves = questions
  records = (_records("a", 4, {u: 1 for u in uids}, seed=0)
             + _records("a", 4, {u: 0 for u in uids}, seed=1)
             + _records("partial", 4, {u: 1 for u in uids[:-1]}))
  table, dropped = selection.build_table(records, bins, halves)
  assert dropped == [("partial", 4)] and table.configs == (("a", 4),)
  assert (table.correct_CxQ == 0.5).all()


def test_bootstrap_weights_that_empty_a_bin_fall_back_to_the_whole_half(questions):
  uids, bins, halves = questions
  table, _ = selection.build_table(_records("x", 4, {u: 1 for u in uids}), bins, halves)
  weights = np.where(table.bins_Q == 5, 0.0, 1.0)
  chosen = selection.two_fold(table, [4], weights_Q=weights)
  assert (chosen.choice_BxHxK >= 0).all() and not np.isnan(chosen.value_BxQ).any()


def test_a_margin_keeps_the_default_unless_another_beats_it_by_more(questions):
  uids, bins, halves = questions
  # Within each (bin, half) group of 4 questions, best_of_n is right on the first 2 and
  # "lucky" on the first 3: lucky leads by 0.25 on every choosing half.
  rank = {}
  for u in uids:
    rank[u] = sum(1 for v in uids if v < u and bins[v] == bins[u] and halves[v] == halves[u])
  assert max(rank.values()) == 3
  base = {u: rank[u] < 2 for u in uids}
  lucky = {u: rank[u] < 3 for u in uids}
  table, _ = selection.build_table(
      _records("best_of_n", 4, base) + _records("lucky", 4, lucky), bins, halves)
  names = np.array([m for m, _ in table.configs])
  for margin, want in ((0.0, "lucky"), (0.2, "lucky"), (0.25, "best_of_n"), (0.5, "best_of_n")):
    chosen = selection.two_fold(table, [4], default="best_of_n", margin=margin)
    assert set(names[chosen.choice_BxHxK[0].ravel()]) == {want}, margin
    want_value = [(lucky if want == "lucky" else base)[u] for u in table.uids]
    np.testing.assert_array_equal(chosen.value_BxQ[0], want_value)
  # Without a default at the budget the margin changes nothing.
  plain = selection.two_fold(table, [4], default="absent", margin=0.5)
  assert set(names[plain.choice_BxHxK[0].ravel()]) == {"lucky"}
