"""train_align.py: the losses and labels of the lite heads' training (the full run is `python train.py align`)."""
import torch
import torch.nn.functional as F

from cir.encoders import LiteConfig, LiteHeads
from cir.training.align import ATTRIBUTES, AttributeClassifiers, attribute_targets, same_item_loss
from cir.training.photos import PhotoSet, accepted_types, photo_loss, photo_type_precision

ATTRS = [{"gender": "Men", "articleType": "Shirts", "baseColour": "Blue", "usage": "Casual",
          "pattern": "Checked"}] * 6 \
    + [{"gender": "Women", "articleType": "Tops", "baseColour": "Red", "usage": "Casual", "pattern": ""}] * 5 \
    + [{"gender": "Boys", "articleType": "Jackets", "baseColour": "NA", "usage": "Casual", "pattern": ""}]


def test_attribute_targets_skip_rare_unknown_and_constant_values():
    labels, targets = attribute_targets(ATTRS, min_count=5)
    assert labels["gender"] == ["Men", "Women"] and targets["gender"][-1] == -1  # "Boys" is too rare
    assert labels["baseColour"] == ["Blue", "Red"] and targets["baseColour"][-1] == -1  # "NA" is unknown
    assert "usage" not in labels and "pattern" not in labels  # one value only: nothing to learn
    assert set(labels) <= set(ATTRIBUTES)


def test_attribute_classifiers_ignore_unknown_labels():
    labels, targets = attribute_targets(ATTRS, min_count=5)
    torch.manual_seed(0)
    clf = AttributeClassifiers(8, labels)
    emb = torch.randn(len(ATTRS), 8, requires_grad=True)
    loss = clf.loss(emb, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()
    assert emb.grad[-1].abs().sum() == 0  # the item with only unknown labels gets no gradient
    none = {a: torch.full((len(ATTRS),), -1) for a in labels}
    assert clf.loss(emb, none).item() == 0


def test_same_item_loss_prefers_grouped_embeddings_and_is_finite():
    key = torch.tensor([0, 0, 1, 1, 2])  # item 4 has no partner: it is left out, never NaN
    grouped = F.normalize(torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [-1.0, 0.0]]), dim=-1)
    mixed = grouped[[0, 2, 1, 3, 4]]
    a, b = same_item_loss(grouped, key, 10.0), same_item_loss(mixed, key, 10.0)
    assert torch.isfinite(a) and a < b
    x = grouped.clone().requires_grad_(True)
    same_item_loss(x, key, 10.0).backward()
    assert torch.isfinite(x.grad).all()
    assert same_item_loss(grouped, torch.arange(5), 10.0).item() == 0  # no positives at all


def test_photos_accept_their_classes_types_and_are_scored_against_them():
    types = ["Caps", "Dresses", "Jackets", "Sweatshirts", "Tshirts"]
    accepts = accepted_types(["outwear", "hat", "dress"], types)
    assert accepts.tolist() == [[False, False, True, True, False], [True, False, False, False, False],
                                [False, True, False, False, False]]
    heads = LiteHeads(LiteConfig(hidden_dim=32, embed_dim=8, colour="hsv"))
    g = torch.Generator().manual_seed(0)
    photos = PhotoSet(torch.randn(2, 3, 1280, generator=g), torch.rand(2, 3, heads.cfg.colour_dim, generator=g),
                      accepts, ["a", "b", "c"])
    shop_types = torch.tensor([0, 1, 2, 3, 4, -1])
    shop = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    type_head = torch.nn.Linear(8, len(types))
    loss = photo_loss(heads, type_head, photos, torch.tensor([0, 1, 2]), torch.tensor([1, 0, 1]), shop, shop_types,
                      20.0)
    loss.backward()
    assert torch.isfinite(loss) and heads.image.skip.weight.grad.abs().sum() > 0
    # The top 2 of each photo by hand: the share of them whose type its class accepts.
    emb = heads.eval().image(photos.pooled[0], photos.colour[0])
    top = (emb @ shop.T).topk(2, dim=1).indices
    want = sum(int(shop_types[j] >= 0 and accepts[i, shop_types[j]]) for i in range(3) for j in top[i]) / 6
    assert abs(photo_type_precision(heads, photos, shop, shop_types, k=2) - 100 * want) < 1e-4
