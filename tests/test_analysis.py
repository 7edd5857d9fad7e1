"""The analysis plan's statistics and verdict rules (corelib/study/analysis.py) on hand-made inputs
whose answers are known."""

import numpy as np
import pandas as pd
import pytest

from corelib.study import analysis


def per_query(rows):
    """A long per-query table from (model, collection, query, method, ndcg@10) tuples."""
    return pd.DataFrame(rows, columns=["model", "collection", "query_id", "method", "ndcg@10"])


def diffs(**strata):
    """Paired differences (points) per collection: diffs(c1=[...], c2=[...])."""
    return pd.DataFrame([(c, d) for c, ds in strata.items() for d in ds], columns=["collection", "diff"])


def test_a_query_evaluated_by_several_models_counts_once_when_pooled():
    pq = per_query([
        ("m1", "c1", "q1", "A", 0.6), ("m1", "c1", "q1", "B", 0.5),  # +10 points
        ("m2", "c1", "q1", "A", 0.7), ("m2", "c1", "q1", "B", 0.5),  # +20 points: the same query
        ("m1", "c1", "q2", "A", 0.3), ("m1", "c1", "q2", "B", 0.34),  # -4 points, m1 only
    ])
    pooled = analysis.paired_differences(pq, "A", "B", pool=True).set_index("query_id")["diff"]
    assert len(pooled) == 2 and pooled["q1"] == pytest.approx(15.0) and pooled["q2"] == pytest.approx(-4.0)
    one = analysis.paired_differences(pq[pq["model"] == "m1"], "A", "B")
    assert sorted(one["diff"].round(6)) == [-4.0, 10.0]
    assert analysis.paired(analysis.paired_differences(pq, "A", "B", pool=True)).queries == 2


def test_a_score_is_never_averaged_in_silently():
    pq = per_query([("m1", "c1", "q1", "A", 0.6), ("m1", "c1", "q1", "A", 0.4), ("m1", "c1", "q1", "B", 0.5)])
    with pytest.raises(ValueError, match="share \\(model, collection, query, method\\).*select one"):
        analysis.paired_differences(pq, "A", "B")
    with pytest.raises(ValueError, match="no C rows"):
        analysis.paired_differences(pq.drop_duplicates(["method"]), "A", "C")


def test_collections_weigh_equally_whatever_their_size():
    r = analysis.paired(diffs(big=[1.0] * 40, small=[3.0, 3.0]))
    assert r.estimate == pytest.approx(2.0)  # not the query mean, 1.095
    assert (r.queries, r.collections) == (42, 2)


def test_a_constant_gain_has_a_point_interval_and_the_smallest_p():
    r = analysis.paired(diffs(c1=[1.0] * 20, c2=[1.0] * 20), n=2000)
    assert (r.ci_low, r.estimate, r.ci_high) == pytest.approx((1.0, 1.0, 1.0))
    assert r.p == pytest.approx(1 / 2001)  # no sign flip of 40 equal differences reaches it but the identity
    assert analysis.superiority_verdict(r.estimate, r.p) == "supported"


def test_symmetric_noise_is_not_significant_and_identical_runs_say_so():
    r = analysis.paired(diffs(c1=[-1.0, 1.0] * 10, c2=[2.0, -2.0] * 10))
    assert r.estimate == pytest.approx(0.0) and r.p == pytest.approx(1.0) and r.ci_low < 0 < r.ci_high
    assert analysis.superiority_verdict(r.estimate, r.p) == "inconclusive"
    same = analysis.paired(diffs(c1=[0.0] * 5, c2=[0.0] * 3))
    assert same.identical and same.p == 1.0 and same.mde == 0.0
    assert analysis.superiority_verdict(same.estimate, same.p, same.identical) == "inconclusive (identical)"
    assert analysis.margin_verdict(1.0, 1.0, identical=True) == "supported (identical)"


def test_interval_p_and_detectable_difference_on_a_known_effect():
    rng = np.random.default_rng(1)
    d = diffs(c1=rng.normal(2.0, 5.0, 400), c2=rng.normal(2.0, 5.0, 400))
    r = analysis.paired(d)
    se = np.sqrt(sum(g.var(ddof=1) / len(g) for _, g in d.groupby("collection")["diff"])) / 2
    assert r.se == pytest.approx(se) and r.mde == pytest.approx(2.8016 * se, rel=1e-3)
    assert r.ci_low < r.estimate < r.ci_high and r.ci_high - r.ci_low == pytest.approx(2 * 1.96 * se, rel=0.05)
    assert r.ci_low > 0 and r.p < 0.001
    assert analysis.paired(d) == r  # seeded: the same numbers every run
    flipped = analysis.paired(d.assign(diff=-d["diff"]))
    assert flipped.estimate == pytest.approx(-r.estimate) and flipped.p == pytest.approx(r.p, abs=2e-3)
    assert analysis.superiority_verdict(flipped.estimate, flipped.p) == "contradicted"


def test_holm_adjusts_within_a_family_keeps_order_and_nan():
    out = analysis.holm([0.01, 0.04, 0.03, np.nan])
    assert out[:3] == pytest.approx([0.03, 0.06, 0.06]) and np.isnan(out[3])  # 3 x 0.01; 2 x 0.03; max(0.06, 0.04)
    assert analysis.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    assert analysis.holm([0.02]) == pytest.approx([0.02])


def test_the_margin_claim_is_judged_by_both_one_sided_tests():
    small_loss = diffs(c1=[-0.1] * 30, c2=[-0.2] * 30)  # loses 0.15 point: inside the 0.5 margin
    big_loss = diffs(c1=[-2.0] * 30, c2=[-3.0] * 30)
    m = analysis.PRUNING_MARGIN
    p_ok = analysis.one_sided_p(small_loss, m, greater=True)
    p_bad = analysis.one_sided_p(small_loss, m, greater=False)
    assert p_ok < 0.01 and p_bad > 0.5
    assert analysis.margin_verdict(p_ok, p_bad) == "supported"
    p_ok, p_bad = analysis.one_sided_p(big_loss, m, greater=True), analysis.one_sided_p(big_loss, m, greater=False)
    assert p_ok > 0.5 and p_bad < 0.01
    assert analysis.margin_verdict(p_ok, p_bad) == "contradicted"
    assert analysis.margin_verdict(0.2, 0.3) == "inconclusive"


def test_superiority_needs_the_adjusted_p_below_alpha():
    assert analysis.superiority_verdict(1.0, 0.049) == "supported"
    assert analysis.superiority_verdict(-1.0, 0.049) == "contradicted"
    assert analysis.superiority_verdict(5.0, 0.05) == "inconclusive"


def test_halves_split_each_collection_and_never_share_a_query():
    q = pd.DataFrame({"collection": ["a"] * 7 + ["b"] * 4})
    first, second = analysis.split_halves(q)
    assert first.intersection(second).empty and first.union(second).equals(q.index)
    assert q.loc[first, "collection"].value_counts().to_dict() == {"a": 3, "b": 2}
    assert analysis.split_halves(q)[0].equals(first) and not analysis.split_halves(q, seed=5)[0].equals(first)


def test_middle_third_is_tested_with_the_layer_as_the_unit():
    # Llama-3.1-8B's released top 8: 7 heads in the middle third, but in 3 layers, 2 of them in it: p 0.26
    inside, k, p_more, p_fewer = analysis.middle_third_test([8, 13, 13, 13, 13, 14, 14, 14], 32)
    assert (inside, k) == (2, 3) and p_more == pytest.approx(3 * (1 / 3) ** 2 * (2 / 3) + (1 / 3) ** 3)
    assert p_more == pytest.approx(0.259, abs=1e-3)
    inside, k, p_more, _ = analysis.middle_third_test([15] * 8, 30)  # one layer: one unit, however many heads
    assert (inside, k) == (1, 1) and p_more == pytest.approx(1 / 3)
    # (1/3, 2/3] of relative depth (layer + 0.5) / L: with L = 6, layers 2 and 3 are in, 1 and 4 are not
    assert analysis.in_middle_third([0, 1, 2, 3, 4, 5], 6).tolist() == [False, False, True, True, False, False]
    inside, k, p_more, p_fewer = analysis.middle_third_test([0, 1, 2, 4, 5, 5], 6)
    assert (inside, k) == (1, 5) and p_fewer == pytest.approx((2 / 3) ** 5 + 5 * (1 / 3) * (2 / 3) ** 4)


def test_control_percentile_and_empirical_p():
    controls = np.arange(10.0)  # 0 .. 9
    assert analysis.control_p(7.5, controls) == pytest.approx((80.0, 3 / 11, 9 / 11))
    assert analysis.control_p(7.0, controls) == pytest.approx((75.0, 4 / 11, 9 / 11))  # a tie counts half, and against
    assert analysis.control_p(100.0, controls)[1] == pytest.approx(1 / 11)  # never below 1 / (n + 1)


def test_control_verdicts_are_holm_adjusted_over_the_models():
    from corelib.study.analysis import control_verdict, holm

    # three models each at empirical p = 0.02 against 1,000 random sets: raw, all supported; over the family, not
    adjusted = holm([0.02, 0.02, 0.02])
    assert list(adjusted) == pytest.approx([0.06, 0.06, 0.06])
    assert [control_verdict(p, 1.0) for p in adjusted] == ["inconclusive"] * 3
    assert control_verdict(0.001, 1.0) == "supported" and control_verdict(1.0, 0.001) == "contradicted"
    assert control_verdict(0.001, 1.0, reference=True).startswith("in-sample reference")


def test_a_margin_claim_carries_the_90_percent_interval_of_its_two_one_sided_tests():
    from corelib.study.analysis import paired

    rng = np.random.default_rng(3)
    d = pd.DataFrame({"collection": ["a"] * 80 + ["b"] * 80, "diff": rng.normal(-1.0, 3.0, 160)})
    r95, r90 = paired(d), paired(d, level=0.90)
    assert r90.estimate == r95.estimate and r90.p == r95.p
    assert r95.ci_low < r90.ci_low < r90.estimate < r90.ci_high < r95.ci_high


def test_the_same_questions_in_several_languages_count_once_and_a_ceiling_is_marked():
    from corelib.study.analysis import by_question, ceiling_note, paired

    rows = [{"collection": lang, "query_id": f"q{i}", "diff": 1.0 if i < 5 else 0.0}
            for lang in ("de", "en", "es") for i in range(30)]
    d = by_question(pd.DataFrame(rows))
    assert len(d) == 30 and d["collection"].nunique() == 1  # 30 questions, not 90 queries
    assert paired(d).queries == 30
    assert ceiling_note("inconclusive", (d["diff"] == 0).mean()) == \
        "inconclusive (uninformative: 83% of the paired differences are 0)"
    assert ceiling_note("supported", 0.5) == "supported"


def test_holm_levels_are_the_levels_of_the_step_down():
    lv = analysis.holm_levels([0.001, 0.04, 0.012, np.nan])
    assert lv[0] == pytest.approx(0.05 / 3) and lv[2] == pytest.approx(0.05 / 2) and lv[1] == pytest.approx(0.05)
    assert np.isnan(lv[3])
    # the smallest p is not rejected at 0.05/2: every one stays at that level (Holm stops)
    assert list(analysis.holm_levels([0.03, 0.026])) == [0.025, 0.025]
    assert list(analysis.holm_levels([0.03, 0.02])) == [0.05, 0.025]  # both rejected
    assert analysis.holm_levels([]).size == 0
    # equal p-values are one step, whatever order they come in: each at the level of the first of them
    assert list(analysis.holm_levels([0.0001, 0.0001, 0.0001, 0.2])) == [0.0125] * 3 + [0.05]
    assert list(analysis.holm_levels([0.2, 0.0001, 0.03, 0.0001])) == [0.025, 0.0125, 0.025, 0.0125]


def test_family_intervals_widen_with_the_family_and_agree_with_its_verdicts():
    """Three models with a clear, a borderline and no effect: each row's interval at its Holm level is wider
    than the plain 95% one (or equal at the last step), and excludes 0 exactly where the Holm verdict rejects."""
    rng = np.random.default_rng(7)
    effects = {"clear": 2.0, "borderline": 0.55, "none": 0.0}
    results = [analysis.paired(pd.DataFrame({"collection": ["a"] * 120 + ["b"] * 120,
                                             "diff": rng.normal(mu, 3.0, 240)})) for mu in effects.values()]
    ps = [r.p for r in results]
    fam = analysis.family_columns(results, ps)
    holm = analysis.holm(ps)
    for r, f, ph in zip(results, fam, holm):
        assert f["ci low (family)"] <= r.ci_low and f["ci high (family)"] >= r.ci_high
        assert f["detectable (80% power, family)"] >= r.mde
        verdict = analysis.superiority_verdict(r.estimate, ph)
        assert (f["ci low (family)"] > 0) == (verdict == "supported")
    assert analysis.superiority_verdict(results[0].estimate, holm[0]) == "supported"
    assert analysis.superiority_verdict(results[2].estimate, holm[2]) == "inconclusive"
    # a margin's 90% interval narrows by the same Holm factor
    (m,) = analysis.family_columns([results[1]], [results[1].p], interval_level=0.90)
    assert m["ci low (family)"] == pytest.approx(results[1].interval(0.90)[0])
