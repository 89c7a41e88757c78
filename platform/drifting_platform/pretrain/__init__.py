"""Self-supervised pre-training of small conv encoders and of the release's Latent-MAE (pure PyTorch core).

    obj = build_objective("simclr", 1, widths=(32, 64, 128))
    loss, info = obj.loss(x, generator)      # x [N, 1, 32, 32] in [-1, 1]
    backbone = obj.encoder()                  # a ResNetBackbone; rebuild with ResNetBackbone(**backbone.spec)
"""

from .augment import affine_warp, augment, gaussian_noise, jitter, random_affine_theta, random_erase, two_views
from ..encoders.backbone import BasicBlock, ResNetBackbone, group_norm
from .objectives import (
    MAE, OBJECTIVES, FineTune, MoCo, Objective, ReleaseMAEObjective, SimCLR, append_mask_channel, build_objective,
    build_release_mae_objective, nt_xent, projection_head, release_lambda_cls,
)

__all__ = [
    "MAE", "OBJECTIVES", "BasicBlock", "FineTune", "MoCo", "Objective", "ReleaseMAEObjective", "ResNetBackbone",
    "SimCLR", "affine_warp", "append_mask_channel", "augment", "build_objective", "build_release_mae_objective",
    "gaussian_noise", "group_norm", "jitter", "nt_xent", "projection_head", "random_affine_theta", "random_erase",
    "release_lambda_cls", "two_views",
]
