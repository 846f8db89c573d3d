"""Acting on a ranking (docs/design.md#acting-on-a-ranking): filter the data, correct the model, detect poisons.

    filter.py     the training data without its top rows, in its own format
    correct/      IBO post-training (objectives, selections, token weights, training, evaluation)
    detect/       poisoned-row detection (test queries, transforms, scoring, rules)
"""
