"""`tokens.prefix_groups`: which scoring rows share a prefix worth running once."""

from __future__ import annotations

from charter.inference.tokens import prefix_groups


def test_the_k_prompts_of_one_pair_group_and_other_pairs_stay_apart() -> None:
    preamble = list(range(10))  # a short shared preamble (system prompt)
    pair1 = preamble + [100] * 90  # pair 1's conversation and responses
    pair2 = preamble + [200] * 90
    rows = [pair1 + [1, 2], pair1 + [3, 4], pair2 + [1, 2], pair1 + [5, 6, 7], pair2 + [8]]
    groups, singles = prefix_groups(rows, [1] * len(rows), minimum=32)
    assert sorted((length, sorted(m)) for length, m in groups) == [(100, [0, 1, 3]), (100, [2, 4])]
    assert singles == []


def test_a_group_leaves_each_member_its_scored_positions() -> None:
    prompt = list(range(50))
    rows = [prompt + [7, 8, 9], prompt + [7, 8]]  # multi-token options: the last 3 and 2 positions scored
    groups, singles = prefix_groups(rows, [4, 3], minimum=8)
    [(length, members)] = groups
    assert length == 49 and sorted(members) == [0, 1] and singles == []
    for i in members:
        assert len(rows[i]) - length >= [4, 3][i]


def test_short_or_unrelated_prefixes_are_not_shared() -> None:
    rows = [[1] * 20 + [2], [1] * 20 + [3], [9] * 40]
    groups, singles = prefix_groups(rows, [1, 1, 1], minimum=32)
    assert groups == [] and sorted(singles) == [0, 1, 2]
    assert prefix_groups([], [], minimum=1) == ([], [])
    [(length, members)] = prefix_groups(rows[:2], [1, 1], minimum=16)[0]
    assert length == 20 and sorted(members) == [0, 1]
