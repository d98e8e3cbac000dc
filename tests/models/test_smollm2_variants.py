"""The packaged SmolLM2-135M (GGUF): conversion to an artifact, and the sanity check that
rerandomizing destroys what training learned (English loss near ln(vocab))."""

from __future__ import annotations

import json
import math

import pytest
import torch

from randsae.models.artifact import load_model_artifact
from randsae.models.variants import apply_variant, embeddings_tied

pytestmark = pytest.mark.slow

# Plain English prose written for this test (about 300 SmolLM2 tokens).
TEXT = (
    "The village sat at the edge of a wide valley, where the river slowed and spread into "
    "shallow pools before it reached the sea. Every morning the baker opened his shop before "
    "sunrise, and the smell of fresh bread drifted down the narrow streets. Children walked to "
    "school in small groups, talking about the games they would play in the afternoon. Their "
    "teacher, a patient woman who had lived in the village all her life, liked to begin each day "
    "with a story about the history of the region. She told them how the old stone bridge had "
    "been built by hand more than two hundred years ago, and how the farmers had carried the "
    "heavy blocks from a quarry in the hills. In the summer, visitors came from the city to walk "
    "along the river and to eat in the small restaurants near the market square. The owners of "
    "the restaurants were glad of the extra work, but many of them also looked forward to the "
    "quiet months of winter, when the streets were empty and they could spend more time with "
    "their families. When the first snow fell, the whole valley turned white, and the only sound "
    "at night was the wind moving through the trees. People said that it was the most beautiful "
    "time of the year, even though the days were short and the roads were often closed for weeks."
)


def _losses(model, tokenizer) -> tuple[float, float]:
    """Next-token loss, and the loss of the same logits against shuffled targets (what a model
    that knows nothing about the text would score against the true ones)."""
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    assert 200 <= ids.shape[1] <= 512
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    shuffled = targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))]
    ce = torch.nn.functional.cross_entropy
    return ce(logits, targets).item(), ce(logits, shuffled).item()


def test_trained_loss_is_far_below_rerandomized_loss(smollm2_trained_dir, record_property):
    info = json.loads((smollm2_trained_dir / "variant.json").read_text())
    assert info["source"]["kind"] == "packaged" and info["tied_embeddings"] is True
    assert "quantization_config" not in json.loads(
        (smollm2_trained_dir / "config.json").read_text()
    )

    loaded = load_model_artifact(smollm2_trained_dir)
    trained, trained_shuffled = _losses(loaded.model, loaded.tokenizer)
    apply_variant(loaded.model, "rerandomized", seed=0)
    assert embeddings_tied(loaded.model)
    rerandomized, rerandomized_shuffled = _losses(loaded.model, loaded.tokenizer)
    ln_vocab = math.log(len(loaded.tokenizer))
    record_property("trained_loss", trained)
    record_property("rerandomized_loss", rerandomized)
    print(
        f"SmolLM2-135M loss: trained {trained:.3f} (shuffled targets {trained_shuffled:.3f}), "
        f"rerandomized {rerandomized:.3f} (shuffled {rerandomized_shuffled:.3f}), "
        f"ln(vocab) {ln_vocab:.3f}"
    )
    assert trained < 4.0 and trained_shuffled - trained > 5.0
    # Norm-preserving redraws give logits with std ~6, so the loss is ln(vocab) + var/2, well
    # above ln(vocab); what matters is that it is no better than against shuffled targets.
    assert rerandomized > 0.8 * ln_vocab and rerandomized - trained > 5.0
    assert rerandomized > 0.9 * rerandomized_shuffled
