"""`tokens.prefix_tree`: which stretches of the scoring rows are shared, so each runs once."""

from __future__ import annotations

from charter.inference.tokens import PrefixNode, prefix_tree


def leaves(node: PrefixNode) -> list[int]:
    return sorted(node.tails + [i for child in node.children for i in leaves(child)])


def test_the_judges_prompts_nest_few_shot_then_pair_then_order_then_question() -> None:
    few_shot = list(range(1000, 1060))  # every pair's prompts start with the same few-shot block
    pair1, pair2 = [100] * 40, [200] * 40  # conversations
    order_ab, order_ba = [7] * 20, [8] * 20  # the responses in each presentation order
    q1, q2 = [1, 2], [3, 4]  # two principle questions
    rows = [
        few_shot + pair1 + order_ab + q1, few_shot + pair1 + order_ab + q2,
        few_shot + pair1 + order_ba + q1, few_shot + pair1 + order_ba + q2,
        few_shot + pair2 + order_ab + q1, few_shot + pair2 + order_ba + q1,
    ]  # fmt: skip
    roots, singles = prefix_tree(rows, [1] * len(rows), minimum=16)
    assert singles == [] and len(roots) == 1
    [root] = roots
    assert (root.start, root.end) == (0, 60) and root.tails == [] and leaves(root) == list(range(6))
    by_pair = {tuple(leaves(c)): c for c in root.children}
    assert set(by_pair) == {(0, 1, 2, 3), (4, 5)}
    one = by_pair[(0, 1, 2, 3)]
    assert (one.start, one.end) == (60, 100)
    assert sorted(tuple(leaves(c)) for c in one.children) == [(0, 1), (2, 3)]  # one node per order
    assert all((c.start, c.end) == (100, 120) and sorted(c.tails) == leaves(c) for c in one.children)
    two = by_pair[(4, 5)]  # K = 1: the two orders share the conversation, their tails differ from there
    assert (two.start, two.end) == (60, 100) and sorted(two.tails) == [4, 5] and two.children == []


def test_every_row_keeps_its_scored_positions_out_of_the_tree() -> None:
    prompt = list(range(50))
    rows = [prompt + [7, 8, 9], prompt + [7, 8]]  # multi-token options: the last 4 and 3 positions scored
    [root], singles = prefix_tree(rows, [4, 3], minimum=8)
    assert singles == [] and root.end == 49 and sorted(root.tails) == [0, 1]
    for i in root.tails:
        assert len(rows[i]) - root.end >= [4, 3][i]
    # identical rows: the tree stops where the first scored position starts
    [same], _ = prefix_tree([prompt, list(prompt)], [1, 1], minimum=8)
    assert same.end == 49 and sorted(same.tails) == [0, 1]


def test_short_or_unrelated_prefixes_are_not_shared() -> None:
    rows = [[1] * 20 + [2], [1] * 20 + [3], [9] * 40]
    assert prefix_tree(rows, [1, 1, 1], minimum=32) == ([], [0, 1, 2])
    assert prefix_tree([], [], minimum=1) == ([], [])
    [root], singles = prefix_tree(rows, [1, 1, 1], minimum=16)
    assert (root.start, root.end) == (0, 20) and sorted(root.tails) == [0, 1] and singles == [2]
