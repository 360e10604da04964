"""The review service: the durable label ledger, uncertainty routing, the human-review queue, the
accepted-label stream and the reviewers' web page (DESIGN §5)."""
