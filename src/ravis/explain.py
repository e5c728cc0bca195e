"""What decided a prediction: the additive terms of each class's score, each neighbour's share
of them, and the same in a sentence.

Every served model's logits are a sum of terms (:class:`ravis.fusion.classifier.Terms`):

    score_c = classifier_c + memory_c - prior_c

- ``classifier``: the head on the fused embedding f. For MAM it reads the memory through the
  attention, which mixes the neighbours' values into f; for the linear probe and the MLP it
  reads only the query; for mean kNN it is the head on the query's part of f.
- ``memory``: for a model with label evidence (MAM in the ravis recipe, and the kNN vote it
  starts as), ``beta * log(eps + votes_c)``, where ``votes_c`` sums the ``vote_weight`` of the
  neighbours labelled c; for mean kNN, the sum of each neighbour's ``contribution`` (Eq. 4 is
  linear in the values). Absent otherwise.
- ``prior``: the post-hoc logit adjustment (``tau * log prior``), where one was chosen.

Probabilities are ``softmax(score / T)`` with the temperature T chosen on validation, so the
classes ranked by score are exactly the top classes by probability. docs/method.md gives the
decomposition of each method.
"""

from __future__ import annotations

import numpy as np

#: A query whose nearest neighbour is at least this similar is that memory entry (or a copy
#: of it) as the encoder sees it: a byte-equal copy embeds identically, and float16 keys
#: round the similarity of identical embeddings to about 1 - 1e-4.
IN_MEMORY_SIMILARITY = 0.9995


def evidence(score: np.ndarray, parts: dict[str, np.ndarray], names: list[str], top: int = 5) -> list[dict]:
    """The ``top`` classes by ``score`` (C,), each with its additive ``parts``; a class the
    model cannot predict (score -inf: one added to the memory, for a model without label
    evidence) is not among them."""
    order = [c for c in np.argsort(-score, kind="stable") if np.isfinite(score[c])][:top]
    return [{"class": names[c], "index": int(c), "score": _number(score[c]),
             "parts": {k: _number(v[c]) for k, v in parts.items()}} for c in order]


def _number(x) -> float | None:
    """A finite float, or None (JSON has no infinity: a class the model cannot predict)."""
    x = float(x)
    return x if np.isfinite(x) else None


def decided_by(kind: str) -> str | None:
    """The neighbour field that orders the tiles of a model of ``kind`` (:func:`kind_of`)."""
    return {"vote": "vote_weight", "linear": "contribution", "attention": "attention"}.get(kind)


def kind_of(has_votes: bool, has_contribution: bool, attention_layers: int) -> str:
    """How a model uses its neighbours: "vote" (label evidence), "linear" (mean kNN: each
    neighbour's exact share), "attention" (MAM without label evidence), "none" (no memory)."""
    if has_votes:
        return "vote"
    if has_contribution:
        return "linear"
    return "attention" if attention_layers else "none"


def in_words(kind: str, ev: list[dict], neighbours: list[dict], kept: str | None = None) -> str:
    """One or two sentences a newcomer reads at once: which neighbours carried the decision,
    and whether the classifier agreed or overruled them."""
    if not ev:
        return ""
    top = ev[0]
    if kind == "none":
        return ("This model reads no memory: the classifier on the query's embedding decided alone. "
                "The neighbours below are what retrieval found; they did not affect the prediction.")
    if kind == "attention":
        return ("The classifier on the attention-refined embedding decided. The attention shows how much "
                "of each neighbour's value was mixed into the query's embedding, not a vote for its label.")
    if kind == "linear":
        return _linear_words(ev, top)
    return _vote_words(ev, neighbours, kept)


def _linear_words(ev: list[dict], top: dict) -> str:
    p = top["parts"]
    text = (f"{top['class']}: {p['classifier']:+.2f} from the classifier on the query and "
            f"{p['memory']:+.2f} from the mean of the neighbours' values")
    by_query = max(ev, key=lambda e: e["parts"]["classifier"])
    by_memory = max(ev, key=lambda e: e["parts"]["memory"])
    if by_query is not top:
        text += f"; the neighbours overruled the query alone, which favoured {by_query['class']}"
    elif by_memory is not top:
        text += f"; the query overruled the neighbours, which favoured {by_memory['class']}"
    return text + "."


def _vote_words(ev: list[dict], neighbours: list[dict], kept: str | None) -> str:
    voters: dict[str, list[float]] = {}
    for n in neighbours:
        if n.get("vote_weight") and n.get("label") is not None:
            voters.setdefault(n["label"], []).append(n["vote_weight"])
    prefix = ("The served model is the kNN vote (validation kept it over the trained module): "
              if kept in ("untrained", "balanced") else "")
    if not voters:
        return prefix + "No retrieved neighbour has a label in the model's classes, so the classifier decided alone."
    # a class with under half a percent of the vote outvotes nothing worth naming
    ranked = sorted(voters, key=lambda c: -sum(voters[c]))
    by_share = [c for c in ranked if sum(voters[c]) >= 0.005] or ranked[:1]
    top = ev[0]["class"]
    lead = by_share[0]

    def who(c: str) -> str:
        n = len(voters.get(c, []))
        return f"{n} {c} neighbour{'s' if n != 1 else ''} ({sum(voters.get(c, [])):.0%} of the vote)"

    if lead == top:
        text = f"{who(lead)}"
        text += f" outvoted {who(by_share[1])}." if len(by_share) > 1 else " carried the whole vote."
        head = max(ev, key=lambda e: e["parts"].get("classifier", 0.0))
        # a zero head (the vote kept) rebuilt from float16 vote shares is flat only to ~1e-4
        terms = [e["parts"].get("classifier", 0.0) for e in ev]
        flat = kept in ("untrained", "balanced") or max(terms) - min(terms) < 1e-3
        if not flat and head["class"] != top:
            text += f" The classifier leaned to {head['class']}, but the vote outweighed it."
        elif not flat:
            text += " The classifier agreed."
        return prefix + text
    by = _overruled_by(ev, top, lead)
    return prefix + (f"{by[0].upper()}{by[1:]} overruled the neighbours: {who(lead)} led the vote, "
                     f"but {by} put {top} first"
                     + (f" ({who(top)})." if top in voters else " (no neighbour voted for it)."))


TERM_WORDS = {"classifier": "the classifier", "prior": "the prior adjustment"}


def _overruled_by(ev: list[dict], top: str, lead: str) -> str:
    """Which terms other than the memory's put ``top`` ahead of the vote's ``lead``: those
    whose difference between the two favours ``top`` (the classifier where ``lead`` is not
    among the evidence's classes)."""
    parts = {e["class"]: e["parts"] for e in ev}
    if lead not in parts:
        return TERM_WORDS["classifier"]
    favour = [TERM_WORDS.get(k, k) for k in parts[top] if k != "memory"
              and (parts[top][k] or 0.0) - (parts[lead].get(k) or 0.0) > 0]
    return " and ".join(favour) or TERM_WORDS["classifier"]


def in_memory(neighbours: list[dict]) -> str | None:
    """The memory id of the entry the query is (or a copy of), where its nearest neighbour is
    that similar (:data:`IN_MEMORY_SIMILARITY`); None otherwise."""
    nearest = min(neighbours, key=lambda n: n["rank"], default=None)
    if nearest is not None and nearest["similarity"] >= IN_MEMORY_SIMILARITY:
        return nearest["memory_id"]
    return None


__all__ = ["IN_MEMORY_SIMILARITY", "decided_by", "evidence", "in_memory", "in_words", "kind_of"]
