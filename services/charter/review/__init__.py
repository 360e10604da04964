"""The review service: the durable label ledger, uncertainty routing, the human-review queue, the
accepted-label stream and the reviewers' web page (docs/review.md). Protocol-free: the gRPC side
is `charter.api.review` and `charter.servicers.review`."""
