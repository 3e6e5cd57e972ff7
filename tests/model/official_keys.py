"""The official EvoTok (siglip_256) state-dict key table (``docs/reference/model.md`` section 10), written out
independently of our model code, filled with random values."""

from __future__ import annotations

import torch

W, MLP, LAYERS, K, C = 1024, 4096, 24, 32768, 32

# Registered by the official VQEmbedding only when trained with --vq-warmup > 0 (the rq_train.py default is 0):
# the table below has all 716 keys; a checkpoint trained with the defaults has the 700 others.
STEP_KEYS = frozenset(f"quantize.codebooks.{i}.step" for i in range(16))


def official_shapes() -> dict[str, tuple[int, ...]]:
    s: dict[str, tuple[int, ...]] = {}
    v = "encoder_vqkd.vision_model."
    s[v + "embeddings.patch_embedding.weight"] = (W, 3, 16, 16)
    s[v + "embeddings.patch_embedding.bias"] = (W,)
    s[v + "embeddings.position_embedding.weight"] = (256, W)
    for i in range(LAYERS):
        p = f"{v}encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[p + f"self_attn.{proj}.weight"] = (W, W)
            s[p + f"self_attn.{proj}.bias"] = (W,)
        for ln in ("layer_norm1", "layer_norm2"):
            s[p + f"{ln}.weight"] = (W,)
            s[p + f"{ln}.bias"] = (W,)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = (MLP, W), (MLP,)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = (W, MLP), (W,)
    s[v + "post_layernorm.weight"] = s[v + "post_layernorm.bias"] = (W,)
    s[v + "head.probe"] = (1, 1, W)
    s[v + "head.attention.in_proj_weight"], s[v + "head.attention.in_proj_bias"] = (3 * W, W), (3 * W,)
    s[v + "head.attention.out_proj.weight"], s[v + "head.attention.out_proj.bias"] = (W, W), (W,)
    s[v + "head.layernorm.weight"] = s[v + "head.layernorm.bias"] = (W,)
    s[v + "head.mlp.fc1.weight"], s[v + "head.mlp.fc1.bias"] = (MLP, W), (MLP,)
    s[v + "head.mlp.fc2.weight"], s[v + "head.mlp.fc2.bias"] = (W, MLP), (W,)
    s["encode_task_layer.0.weight"], s["encode_task_layer.0.bias"] = (W, W), (W,)
    s["encode_task_layer.2.weight"], s["encode_task_layer.2.bias"] = (C, W), (C,)
    for i in range(16):
        s[f"quantize.codebooks.{i}.weight"] = (K + 1, C)
        s[f"quantize.codebooks.{i}.cluster_size_ema"] = (K,)
        s[f"quantize.codebooks.{i}.embed_ema"] = (K, C)
        s[f"quantize.codebooks.{i}.step"] = ()
    s["quantize.codebook_used"] = (131072, 16)
    s["post_quant_conv.weight"], s["post_quant_conv.bias"] = (256, C, 1, 1), (256,)

    def res(p: str, cin: int, cout: int) -> None:
        s[p + "norm1.weight"] = s[p + "norm1.bias"] = (cin,)
        s[p + "conv1.weight"], s[p + "conv1.bias"] = (cout, cin, 3, 3), (cout,)
        s[p + "norm2.weight"] = s[p + "norm2.bias"] = (cout,)
        s[p + "conv2.weight"], s[p + "conv2.bias"] = (cout, cout, 3, 3), (cout,)
        if cin != cout:
            s[p + "nin_shortcut.weight"], s[p + "nin_shortcut.bias"] = (cout, cin, 1, 1), (cout,)

    def attn(p: str, c: int) -> None:
        s[p + "norm.weight"] = s[p + "norm.bias"] = (c,)
        for n in ("q", "k", "v", "proj_out"):
            s[p + f"{n}.weight"], s[p + f"{n}.bias"] = (c, c, 1, 1), (c,)

    s["decoder.conv_in.weight"], s["decoder.conv_in.bias"] = (512, 256, 3, 3), (512,)
    res("decoder.mid.0.", 512, 512)
    attn("decoder.mid.1.", 512)
    res("decoder.mid.2.", 512, 512)
    chans = [(512, 512), (512, 256), (256, 256), (256, 128), (128, 128)]
    for i, (cin, cout) in enumerate(chans):
        for j in range(3):
            res(f"decoder.conv_blocks.{i}.res.{j}.", cin if j == 0 else cout, cout)
            if i == 0:
                attn(f"decoder.conv_blocks.0.attn.{j}.", cout)
        if i < 4:
            s[f"decoder.conv_blocks.{i}.upsample.conv.weight"] = (cout, cout, 3, 3)
            s[f"decoder.conv_blocks.{i}.upsample.conv.bias"] = (cout,)
    s["decoder.norm_out.weight"] = s["decoder.norm_out.bias"] = (128,)
    s["decoder.conv_out.weight"], s["decoder.conv_out.bias"] = (3, 128, 3, 3), (3,)
    d = "decoder_vqkd."
    s[d + "cls_token"], s[d + "pos_embed"] = (1, 1, W), (1, 257, W)
    s[d + "patch_embed.proj.weight"], s[d + "patch_embed.proj.bias"] = (W, C, 1, 1), (W,)
    for i in range(3):
        p = f"{d}blocks.{i}."
        for ln in ("norm1", "norm2"):
            s[p + f"{ln}.weight"] = s[p + f"{ln}.bias"] = (W,)
        s[p + "attn.qkv.weight"] = (3060, W)
        s[p + "attn.q_bias"] = s[p + "attn.v_bias"] = (1020,)
        s[p + "attn.proj.weight"], s[p + "attn.proj.bias"] = (W, 1020), (W,)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = (MLP, W), (MLP,)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = (W, MLP), (W,)
    s[d + "fc_norm.weight"] = s[d + "fc_norm.bias"] = (W,)
    s["decode_task_layer.0.weight"], s["decode_task_layer.0.bias"] = (W, W), (W,)
    s["decode_task_layer.2.weight"], s["decode_task_layer.2.bias"] = (W, W), (W,)
    s["scaling_layer.shift"] = s["scaling_layer.scale"] = (1, 3, 1, 1)
    return s


def random_official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in official_shapes().items():
        if key.endswith(".step"):
            out[key] = torch.tensor(5000, dtype=torch.long)
        else:
            out[key] = torch.randn(shape, generator=g) * 0.05
            if key.startswith("quantize.codebooks.") and key.endswith(".weight"):
                out[key][K] = 0.0
    return out
