"""Scene-evolving guidance: text encoders, intent sources, intent table, record hook, config strictness.

Tiny random T5/umT5 encoders and a tiny random LLaVA are built here, saved to tmp dirs with locally built
WordLevel tokenizers and loaded back by path (nothing is downloaded); the tests check the plumbing, not words.
"""

import os

import numpy as np
import pytest

from experiments import drivewam_tiny
from wam_jax import guidance as g
from wam_jax.config import ConfigError

WORDS = ["<pad>", "</s>", "<unk>", "<s>", "<image>", "user", "assistant", ":", ",", "keep", "lane", "change", "left",
         "right", "slow", "down", "cruise", "follow", "the", "car", "ahead", "to", "overtake", "driving", "intent"]


def _tokenizer(eos_template: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if eos_template:  # T5-style: append </s>
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   bos_token="<s>")


def _config(**guidance):
    c = drivewam_tiny.get_config("guidance=on")
    c.guidance = dict(enabled=True, **guidance)
    return c


# ----------------------------------------------------------------------------------------------------- word_hash

def test_word_hash_deterministic_distinct_order_sensitive_and_padded():
    enc = g.make_encoder({}, text_dim=32, tokens=4)
    texts = ["keep lane", "Keep  lane!", "change lane left", "change lane right", "lane keep", "", "a b c d e f"]
    out = enc.encode(texts)
    assert out.shape == (7, 4, 32) and out.dtype == np.float32
    fresh = g.WordHashEncoder(32, 4).encode(texts)  # a new instance: nothing depends on per-process state
    np.testing.assert_array_equal(out, fresh)
    np.testing.assert_array_equal(out[0], out[1])  # case and punctuation are not words
    assert not np.allclose(out[2], out[3])  # one word differs
    assert not np.allclose(out[0], out[4])  # same words, other order
    # One token per word, zero rows after; an empty text is all zeros; long texts are cut to Lg tokens.
    assert np.all(out[0, 2:] == 0) and np.all(np.abs(out[0, :2]).sum(-1) > 0)
    assert np.all(out[5] == 0) and np.all(np.abs(out[6]).sum(-1) > 0)
    np.testing.assert_allclose(np.sqrt((out[6] ** 2).mean(-1)), 1.0, rtol=1e-5)  # hash_rms=1 per token
    # Lg = 1 still tells all intents (and word orders) apart: each token carries the whole text.
    one = g.make_encoder({}, 32, 1).encode(["change lane left", "change lane right", "change left lane"])
    assert not np.allclose(one[0], one[1]) and not np.allclose(one[0], one[2])
    with pytest.raises(TypeError, match="list of texts"):
        enc.encode("keep lane")


def test_intent_table_is_highway_vocabulary_cached_and_matches_encoder():
    from wam_jax.sim.highway import INTENTS

    c = _config()
    table = g.intent_table(c)
    assert table.shape == (len(INTENTS), 1, 32) and table.dtype == np.float32
    assert g.intent_table(c) is table and not table.flags.writeable
    assert g.GuidanceConfig.from_config(c.guidance).intent_vocabulary() == tuple(INTENTS)
    np.testing.assert_array_equal(table, g.make_encoder(c.guidance, 32, 1).encode(list(INTENTS)))
    custom = g.intent_table(_config(vocabulary=("go", "stop", "wait")))
    assert custom.shape == (3, 1, 32)
    assert len({row.tobytes() for row in table}) == len(INTENTS)


def test_unknown_or_bad_config_field_is_named():
    with pytest.raises(ConfigError, match=r"encdoer.*config\.guidance.*did you mean encoder"):
        g.GuidanceConfig.from_config({"enabled": True, "encdoer": "word_hash"})
    with pytest.raises(ConfigError, match="vlm_framez"):
        g.intent_table(_config(vlm_framez=2))
    with pytest.raises(ConfigError, match=r"guidance\.encoder='bert'"):
        g.make_guidance({"encoder": "bert"}, 32, 1)
    with pytest.raises(ConfigError, match="encoder_path"):
        g.make_encoder({"encoder": "transformers"}, 32, 1)
    with pytest.raises(ConfigError, match="vlm_path"):
        g.make_source({"source": "vlm"})


# -------------------------------------------------------------------------------------------------- transformers

def _save_t5(root, kind: str, d_model: int = 16, diffusers_layout: bool = False) -> str:
    import torch
    import transformers

    cls, cfg_cls = {"t5": ("T5EncoderModel", "T5Config"), "umt5": ("UMT5EncoderModel", "UMT5Config")}[kind]
    config = getattr(transformers, cfg_cls)(vocab_size=len(WORDS), d_model=d_model, d_kv=8, d_ff=32, num_layers=2,
                                            num_heads=2, relative_attention_num_buckets=8, pad_token_id=0,
                                            eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config).eval()
    enc_dir = os.path.join(root, "text_encoder") if diffusers_layout else root
    tok_dir = os.path.join(root, "tokenizer") if diffusers_layout else root
    model.save_pretrained(enc_dir)
    _tokenizer(eos_template=True).save_pretrained(tok_dir)
    return root


@pytest.mark.parametrize("kind,diffusers_layout", [("t5", False), ("umt5", True)])
def test_transformers_encoder_matches_torch_model(tmp_path, kind, diffusers_layout):
    import torch
    import transformers

    path = _save_t5(str(tmp_path), kind, diffusers_layout=diffusers_layout)
    enc = g.make_encoder({"encoder": "transformers", "encoder_path": path}, text_dim=16, tokens=4)
    texts = ["keep lane", "change lane left to overtake", "slow down , the car ahead"]
    out = enc.encode(texts)
    assert out.shape == (3, 4, 16) and out.dtype == np.float32
    np.testing.assert_array_equal(out, enc.encode(texts))

    sub = (lambda s: os.path.join(path, s)) if diffusers_layout else (lambda s: path)
    tok = transformers.AutoTokenizer.from_pretrained(sub("tokenizer"))
    model = getattr(transformers, {"t5": "T5EncoderModel", "umt5": "UMT5EncoderModel"}[kind]).from_pretrained(
        sub("text_encoder")).eval()
    for i, text in enumerate(texts):  # one text at a time, unpadded: the reference
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            ref = model(input_ids=ids).last_hidden_state[0].numpy()
        k = min(4, len(ref))
        np.testing.assert_allclose(out[i, :k], ref[:k], atol=1e-5, rtol=1e-4)
        assert np.all(out[i, k:] == 0)
    assert not out[0, 3].any() and out[0, 2].any()  # "keep lane </s>" is 3 tokens: zero-padded to 4


def test_transformers_encoder_width_mismatch_names_both(tmp_path):
    path = _save_t5(str(tmp_path), "t5", d_model=16)
    with pytest.raises(ConfigError, match=r"16-wide.*text_dim.*is 32"):
        g.make_encoder({"encoder": "transformers", "encoder_path": path}, text_dim=32, tokens=1)


# ------------------------------------------------------------------------------------------------------- sources

def test_scene_rules_source_on_highway_env():
    from wam_jax.sim import highway as hw

    cfg = hw.HighwaySimConfig(vehicles=12, duration_s=10.0)
    env = hw.make_env(cfg, 3)
    try:
        for _ in range(5):
            env.step(hw.expert_action(env, cfg))
        scene = hw.intent_from_scene(env)
        future = hw.expert_future(env, cfg)[cfg.steps_per_waypoint - 1:: cfg.steps_per_waypoint]
        from_future = hw.scene_intent(env, cfg, future)

        c = _config()
        guide = g.make_guidance(c.guidance, 32, 1)
        assert guide.intents(None, {"env": env}) == [scene.command]
        assert guide.intents(None, {"env": [env, env], "future_poses": [None, future], "sim_config": cfg}) == [
            scene.command, from_future.command]
        phrases = g.make_source({"scene_text": "phrase"}).intents(None, {"env": env})
        assert phrases == [scene.text]
        # Recorded intents pass through (Intent objects or texts); embeddings are the intent table's rows.
        assert guide.intents([np.zeros((1, 4, 4, 3), np.uint8)], {"intent": [scene]}) == [scene.command]
        emb = guide.embed(None, {"env": env})
        np.testing.assert_array_equal(emb[0], g.intent_table(c)[hw.INTENTS.index(scene.command)])
        with pytest.raises(ValueError, match="extra\\['intent'\\].*extra\\['env'\\]"):
            guide.intents(None, {})
    finally:
        env.close()


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    import torch
    import transformers

    path = str(tmp_path_factory.mktemp("vlm"))
    image_proc = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)(
        size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    template = ("{% for m in messages %}{{ m['role'] }} : {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}assistant : {% endif %}")
    tok = _tokenizer(eos_template=False)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = transformers.LlavaProcessor(image_processor=image_proc, tokenizer=tok, patch_size=8,
                                            vision_feature_select_strategy="default", chat_template=template,
                                            num_additional_image_tokens=1, image_token="<image>")
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, image_size=16, patch_size=8),
        text_config=transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                             max_position_embeddings=256, pad_token_id=0, bos_token_id=3,
                                             eos_token_id=1),
        image_token_index=WORDS.index("<image>"), vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # large random weights, so the answer depends on the image (default init: it does not)
        for param in model.parameters():
            if param.ndim > 1:
                param.normal_(0.0, 0.5)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def test_vlm_source_frames_to_text_to_embedding(tiny_vlm):
    import torch
    import transformers
    from PIL import Image

    section = {"source": "vlm", "vlm_path": tiny_vlm, "vlm_frames": 2, "vlm_max_new_tokens": 6, "max_words": 3,
               "vlm_prompt": "driving intent"}
    guide = g.make_guidance(section, text_dim=32, tokens=2)
    colours = [(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 0, 255)]
    frames = [np.broadcast_to(np.array(c, np.uint8), (3, 24, 32, 3)).copy() for c in colours]
    texts = guide.intents(frames)
    assert len(set(texts)) > 1  # the frames reach the model
    assert len(texts) == 4 and all(isinstance(t, str) and len(t.split()) <= 3 for t in texts)
    assert guide.intents(frames) == texts  # greedy: deterministic
    emb = guide.embed(frames)
    assert emb.shape == (4, 2, 32) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, guide.encoder.encode(texts))

    # Reference: the processor and model called directly on the last two frames.
    processor = transformers.AutoProcessor.from_pretrained(tiny_vlm)
    model = transformers.AutoModelForImageTextToText.from_pretrained(tiny_vlm).eval()
    prompt = "user : <image> <image> driving intent assistant : "
    assert guide.source.prompt_text(2) == prompt
    for f, text in zip(frames, texts):
        inputs = processor(images=[Image.fromarray(x) for x in f[-2:]], text=prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        raw = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        assert text == g.clean_phrase(raw, 3)

    snapped = g.make_source(dict(section, snap_to_vocabulary=True)).intents(frames, {})
    from wam_jax.sim.highway import INTENTS
    assert all(t in INTENTS for t in snapped)
    with pytest.raises(ValueError, match=r"context_frames\[0\] must be uint8"):
        guide.intents([np.zeros((2, 8, 8, 3), np.float32)])


def test_record_hook_embeds_recorded_intents_and_runs_the_vlm(tiny_vlm):
    from data_pipelines import fixtures

    c = _config()
    clip = fixtures.synthetic_clip(1, num_chunks=3, intents=("keep lane", "slow down", "change lane left"))
    out = g.record_hook(c)(clip)
    from wam_jax.sim.highway import INTENTS
    ids = [INTENTS.index(t) for t in clip.intent]
    np.testing.assert_array_equal(out.guidance, g.intent_table(c)[ids])
    assert out.guidance.shape == (3, 1, 32)

    vc = _config(source="vlm", vlm_path=tiny_vlm, vlm_max_new_tokens=4, vlm_prompt="driving intent")
    clip_vlm = g.record_hook(vc, use="source")(fixtures.synthetic_clip(2, num_chunks=3))
    assert len(clip_vlm.intent) == 3 and clip_vlm.guidance.shape == (3, 1, 32)
    encoder = g.make_encoder(vc.guidance, 32, 1)
    np.testing.assert_array_equal(clip_vlm.guidance, g.embed_records(clip_vlm.intent, encoder))
    ctx = g.chunk_context_frames(clip.frames, clip.chunk_start, 2)
    assert [len(x) for x in ctx] == [2, 2, 2] and np.array_equal(ctx[0][-1], clip.frames[clip.chunk_start[0]])
    with pytest.raises(ValueError, match="no per-chunk 'intent'"):
        g.record_hook(c)(fixtures.synthetic_clip(3))


def test_clean_phrase_and_snap():
    assert g.clean_phrase("  Keep Lane, follow the car ahead. Then stop", 4) == "keep lane, follow the"
    assert g.clean_phrase("<unk> slow   down!!", 8) == "unk slow down"
    voc = ("keep lane", "change lane left", "change lane right", "slow down")
    assert g.snap_to_vocabulary("change to the left lane", voc) == "change lane left"
    assert g.snap_to_vocabulary("please slow", voc) == "slow down"
    assert g.snap_to_vocabulary("honk", voc) == "keep lane"
