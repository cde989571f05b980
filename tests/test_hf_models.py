"""Hugging Face transformers models under `parametrize`, with HF's own default init (std 0.02 at every width):
tiny configs built locally (no downloads), 1 layer, vocab 64, widths 64 (base) / 128 (delta) / 512 (target)."""
import math
import subprocess
import sys
import warnings

import pytest
import torch

import lrm_mup
from lrm_mup.core.foreign import attention_config
from lrm_mup.core.multipliers import multiplied_modules

BASE, DELTA, TARGET = 64, 128, 512
VOCAB = 64
ARCHS = ("llama", "llama-tied", "llama-gqa", "qwen3", "mistral", "gpt2", "gemma")
CONFIGS = {"qwen3": "Qwen3", "mistral": "Mistral", "gemma": "Gemma"}  # the rest: Llama


def make(arch: str, width: int, seed: int = 0, heads: int | None = None) -> torch.nn.Module:
    """A tiny HF causal LM at `width`, head dim 16 (or `heads` heads), initialized by transformers from `seed`."""
    transformers = pytest.importorskip("transformers")
    n_heads = heads or width // 16
    common = dict(vocab_size=VOCAB, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                  num_attention_heads=n_heads, max_position_embeddings=32, attn_implementation="eager")
    torch.manual_seed(seed)
    if arch == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=width, n_layer=1, n_head=n_heads, n_positions=32, attn_implementation="eager",
            bos_token_id=0, eos_token_id=0)
        ).eval()  # GPT-2's dropout
    kv = n_heads // 2 if arch == "llama-gqa" else n_heads
    prefix = CONFIGS.get(arch, "Llama")
    config = getattr(transformers, f"{prefix}Config")(**common, num_key_value_heads=kv, head_dim=width // n_heads,
                                                      tie_word_embeddings=arch in ("llama-tied", "gemma"))
    return getattr(transformers, f"{prefix}ForCausalLM")(config)


def test_lrm_mup_imports_and_parametrizes_without_transformers():
    code = ("import sys; sys.modules['transformers'] = sys.modules['tokenizers'] = None\n"
            "import lrm_mup, lrm_mup.core.foreign\n"
            "from lrm_mup.models.proxy import GPT, GPTConfig\n"
            "m = lrm_mup.parametrize(GPT(GPTConfig(width=32, head_dim=8)), GPT(GPTConfig(width=16, head_dim=8)),\n"
            "                        GPT(GPTConfig(width=32, head_dim=8)), 'lrm')\n"
            "assert 'transformers' not in [k for k, v in sys.modules.items() if v is not None]\n"
            "print('ok', len(lrm_mup.describe(m)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-2000:]


def shapes(arch: str, **kw) -> lrm_mup.BaseShapes:
    return lrm_mup.base_shapes(make(arch, BASE, seed=100, **kw), make(arch, DELTA, seed=101, **kw))


def logits(model, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_every_recipe_is_the_hf_model_itself_at_the_base_width(arch):
    sh = shapes(arch)
    plain = logits(make(arch, BASE).double())
    for recipe in lrm_mup.RECIPES:
        model = lrm_mup.parametrize(make(arch, BASE).double(), sh, recipe=recipe)
        torch.testing.assert_close(logits(model), plain, rtol=0, atol=0, msg=recipe)


@pytest.mark.parametrize("arch", ARCHS)
def test_lrm_equals_mup_at_init_and_merged_equals_unmerged_at_delta_and_target(arch):
    sh = shapes(arch)
    for width in (DELTA, TARGET):
        mup = lrm_mup.parametrize(make(arch, width).double(), sh, recipe="mup")
        lrm = lrm_mup.parametrize(make(arch, width).double(), sh, recipe="lrm")
        out = logits(lrm)
        torch.testing.assert_close(out, logits(mup), rtol=0, atol=0)
        torch.testing.assert_close(logits(lrm_mup.merge(lrm)), out, rtol=1e-12, atol=1e-12)


def _std(layer) -> float:
    return float(layer.effective_weight().detach().double().std())


@pytest.mark.parametrize("arch", ("llama", "gpt2"))
def test_mup_sets_hf_init_to_base_std_times_root_fan_in_ratio(arch):
    """HF draws every matrix at std 0.02 whatever the width; under μP the effective hidden std must be
    σ_base·√(base fan-in / fan-in): 0.0200 / 0.0141 / 0.0071 at 64 / 128 / 512, the readout σ_base·(base/width),
    the embedding σ_base; SP keeps HF's init."""
    sh = shapes(arch)
    for width in (BASE, DELTA, TARGET):
        m = width / BASE
        model = lrm_mup.parametrize(make(arch, width), sh, recipe="mup")
        sp = lrm_mup.parametrize(make(arch, width), sh, recipe="sp")
        if arch == "gpt2":
            hidden, name, emb, head = model.transformer.h[0].mlp.c_fc, "transformer.h.0.mlp.c_fc.weight", \
                model.transformer.wte, model.lm_head
            hidden_sp = sp.transformer.h[0].mlp.c_fc
        else:
            hidden, name, emb, head = model.model.layers[0].self_attn.q_proj, \
                "model.layers.0.self_attn.q_proj.weight", model.model.embed_tokens, model.lm_head
            hidden_sp = sp.model.layers[0].self_attn.q_proj
        base_std = sh.init_std[name]
        assert base_std == pytest.approx(0.02, rel=0.05)
        assert _std(hidden) == pytest.approx(base_std / math.sqrt(m), rel=0.03), width
        assert _std(hidden_sp) == pytest.approx(0.02, rel=0.03)  # sp: the model's own init
        assert _std(emb) == pytest.approx(sh.init_std[[k for k in sh.init_std if "wte" in k or "embed" in k][0]],
                                          rel=0.03)
        if arch == "llama":  # GPT-2's readout is tied to the embedding: its init is the embedding's
            assert _std(head) == pytest.approx(sh.init_std["lm_head.weight"] / m, rel=0.03)


def test_init_keep_leaves_hf_init_and_warns_and_rescale_does_not():
    sh = shapes("llama")
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"not the mup init.*q_proj.weight std 0.0"):
        model = lrm_mup.parametrize(make("llama", TARGET), sh, recipe="mup", init="keep")
    assert _std(model.model.layers[0].self_attn.q_proj) == pytest.approx(0.02, rel=0.03)  # HF's init, as it was
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrm_mup.parametrize(make("llama", TARGET), sh, recipe="mup")
    with pytest.raises(lrm_mup.RecipeError, match="unknown init 'fan_in'; allowed: rescale, keep"):
        lrm_mup.parametrize(make("llama", TARGET), sh, recipe="mup", init="fan_in")


def test_init_statistics_travel_in_base_shapes_json_and_records(tmp_path):
    sh = shapes("llama")
    sh.save(tmp_path / "base_shapes.json")
    again = lrm_mup.BaseShapes.load(tmp_path / "base_shapes.json")
    assert again.init_std == sh.init_std and again.head_dim == sh.head_dim == 16
    a = lrm_mup.parametrize(make("llama", TARGET), sh, recipe="mup")
    b = lrm_mup.parametrize(make("llama", TARGET), again, recipe="mup")
    torch.testing.assert_close(logits(a), logits(b), rtol=0, atol=0)
    record = lrm_mup.parametrization_of(a)
    assert type(record).from_json(record.to_json()) == record and record.base().init_std == sh.init_std
    # an older file without statistics: the init is taken as it is, with a warning saying so
    old = lrm_mup.BaseShapes.from_dims(sh.dims(), sh.head_dim)
    with pytest.warns(UserWarning, match="no init statistics"):
        lrm_mup.parametrize(make("llama", TARGET), old, recipe="mup")


def test_head_dim_gqa_and_tying_come_from_the_hf_config():
    model = make("llama-gqa", TARGET)
    assert attention_config(model) == {"heads": 32, "kv_heads": 16, "head_dim": 16, "tied": False}
    assert attention_config(make("gpt2", BASE))["head_dim"] == 16
    assert attention_config(make("llama-tied", BASE))["tied"] is True


def test_mup_attention_factor_reaches_hf_attention_when_the_head_dim_grows():
    """4 heads at every width: head dim 16 → 128. μP's logits are q·kᵀ·√16/128 (α/d_head, α = √d_base); the
    parametrized model must equal the merged model with q_proj's factor taken out and every attention's
    `scaling` set to √16/128 by hand."""
    sh = shapes("llama", heads=4)
    assert sh.head_dim == 16
    model = lrm_mup.parametrize(make("llama", TARGET, heads=4).double(), sh, recipe="mup")
    q = model.model.layers[0].self_attn.q_proj
    factor = math.sqrt(16 / 128)
    assert q.fixed_mult == pytest.approx(factor / 8)  # μP's 1/m and the attention factor
    by_hand = lrm_mup.merge(model)
    attn = by_hand.model.layers[0].self_attn
    with torch.no_grad():
        attn.q_proj.weight /= factor
    assert attn.scaling == 128 ** -0.5
    attn.scaling = math.sqrt(16) / 128
    torch.testing.assert_close(logits(by_hand), logits(model), rtol=1e-10, atol=1e-12)


def test_growing_head_dim_is_refused_where_the_factor_cannot_reach_the_logits():
    with pytest.raises(lrm_mup.RoleError, match=r"Qwen3Attention 'model.layers.0.self_attn' normalizes the query"):
        lrm_mup.parametrize(make("qwen3", DELTA, heads=4), shapes("qwen3", heads=4), recipe="mup")
    with pytest.raises(lrm_mup.RoleError, match="no layer has role 'query'"):
        lrm_mup.parametrize(make("gpt2", DELTA, heads=4), shapes("gpt2", heads=4), recipe="mup")
    lrm_mup.parametrize(make("qwen3", DELTA, heads=4), shapes("qwen3", heads=4), recipe="sp")  # SP: no factor
    gpt2 = make("gpt2", DELTA)
    with pytest.raises(lrm_mup.RecipeError, match="optimizer 'muon' with Conv1D 'transformer.h.0.attn.c_attn'"):
        lrm_mup.parametrize(gpt2, shapes("gpt2"), recipe="mup", optimizer="muon")
    assert not multiplied_modules(gpt2)  # refused before anything was converted


@pytest.mark.parametrize("arch", ("llama", "llama-tied", "gpt2", "gemma"))
def test_merged_save_pretrained_loads_as_the_plain_class_with_identical_logits(arch, tmp_path):
    model = lrm_mup.parametrize(make(arch, DELTA), shapes(arch), recipe="lrm")
    lrm_mup.save_pretrained(model, tmp_path / "hf")
    loaded = type(model).from_pretrained(tmp_path / "hf")
    assert not multiplied_modules(loaded)
    torch.testing.assert_close(logits(loaded), logits(model), rtol=1e-6, atol=1e-6)


def test_resize_save_and_plain_loads_of_an_unmerged_model_are_refused(tmp_path):
    model = lrm_mup.parametrize(make("llama", DELTA), shapes("llama"), recipe="mup")
    with pytest.raises(lrm_mup.RecipeError, match="resize_token_embeddings after parametrize"):
        model.resize_token_embeddings(VOCAB + 8)
    with pytest.raises(lrm_mup.RecipeError, match="lrm_mup.save_pretrained"):
        model.save_pretrained(tmp_path / "unmerged")
    with pytest.raises(RuntimeError, match="lrm_mup_unmerged"):
        make("llama", DELTA).load_state_dict(model.state_dict())
    merged = lrm_mup.merge(model)
    make("llama", DELTA).load_state_dict(merged.state_dict())  # the merged state is a plain one


def test_gemma_scaled_embedding_keeps_the_base_constant_under_mup():
    """Gemma's embedding multiplies its lookup by √hidden (8 at 64, 22.6 at 512): under μP the forward keeps the
    base's 8 (embedding output and updates as in the base), under SP the model's own; merge gives Gemma's class."""
    sh = shapes("gemma")
    assert sh.module_scales == {"model.embed_tokens": 8.0}
    ids = torch.arange(8)
    for recipe, c in (("mup", 8.0), ("sp", float(torch.tensor(math.sqrt(TARGET))))):
        model = lrm_mup.parametrize(make("gemma", TARGET).double(), sh, recipe=recipe)
        emb = model.model.embed_tokens
        assert emb.parametrization.module_scale == pytest.approx(math.sqrt(TARGET), rel=1e-7)
        torch.testing.assert_close(emb(ids), emb.weight[ids] * c, rtol=1e-15, atol=0)
        merged = lrm_mup.merge(model).model.embed_tokens
        assert type(merged).__name__ == "GemmaTextScaledWordEmbedding"
        torch.testing.assert_close(merged(ids), emb(ids), rtol=1e-15, atol=0)


class _OwnTable(torch.nn.Module):
    """A user's model: a raw nn.Parameter position table (context, width) and HF-style init (std 0.02)."""

    def __init__(self, width: int):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, width)
        self.pos = torch.nn.Parameter(torch.randn(12, width) * width ** -0.5)  # init ∝ 1/√width: not μP's
        self.mix = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, VOCAB)
        for p in (self.emb.weight, self.mix.weight, self.head.weight):
            torch.nn.init.normal_(p, std=0.02)

    def forward(self, ids):
        return self.head(torch.relu(self.mix(self.emb(ids) + self.pos[: ids.shape[1]])))


class _RawSquare(_OwnTable):
    def __init__(self, width: int):
        super().__init__(width)
        self.square = torch.nn.Parameter(torch.zeros(width, width))


def test_raw_position_tables_are_kept_as_input_tensors_and_other_raw_width_tensors_refused():
    torch.manual_seed(0)
    sh = lrm_mup.base_shapes(_OwnTable(BASE), _OwnTable(DELTA))
    base_std = sh.init_std["pos"]
    model = lrm_mup.parametrize(_OwnTable(TARGET), sh, recipe="mup")
    assert lrm_mup.parametrization_of(model).free_tensors == {"pos": "input"}
    assert float(model.pos.detach().double().std()) == pytest.approx(base_std, rel=1e-6)  # the embedding rule: as in the base
    assert float(model.mix.effective_weight().detach().double().std()) == pytest.approx(0.02 / math.sqrt(8), rel=0.03)
    with pytest.raises(lrm_mup.RoleError, match=r"'square' \(512\(width\)x512\(width\)\) is a width matrix held "
                                                r"by _RawSquare.*write the layer as nn.Linear"):
        lrm_mup.parametrize(_RawSquare(TARGET), lrm_mup.base_shapes(_RawSquare(BASE), _RawSquare(DELTA)), "mup")
    named = lrm_mup.parametrize(_OwnTable(TARGET), sh, recipe="mup", roles={"pos": "embedding"})
    assert lrm_mup.parametrization_of(named).free_tensors == {"pos": "embedding"}
    with pytest.raises(lrm_mup.RoleError, match="'pos' .* held by _OwnTable"):  # declared a readout: refused
        lrm_mup.parametrize(_OwnTable(TARGET), sh, recipe="mup", roles={"pos": "readout"})


def test_an_embedding_subclass_with_its_own_forward_is_refused_by_class_name():
    class Dropped(torch.nn.Embedding):
        def forward(self, ids):
            return torch.nn.functional.dropout(super().forward(ids), 0.5) + 1.0

    def build(width):
        model = _OwnTable(width)
        model.emb = Dropped(VOCAB, width)
        return model

    with pytest.raises(lrm_mup.RoleError, match="held by Dropped, a subclass of nn.Embedding with a forward of its"):
        lrm_mup.parametrize(build(DELTA), build(BASE), build(DELTA), "mup")


def test_effective_path_maps_conv1d_gradients_as_the_reparametrized_path_computes_them():
    """GPT-2's transposed Conv1D under lrm: the gradients EffectivePath maps onto W̃ and the multipliers equal
    autograd's through the factors."""
    sh = shapes("gpt2")
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for effective in (False, True):
        model = lrm_mup.parametrize(make("gpt2", DELTA).double(), sh, recipe="lrm")
        with torch.no_grad():  # multipliers off 1, so that every term of the mapping counts
            for _, p in lrm_mup.multiplier_parameters(model):
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(p.numel()))
        path = lrm_mup.EffectivePath(model) if effective else None
        model(ids, labels=ids).loss.backward()
        if path:
            path.map_grads()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any("c_attn.mult_row" in n for n in grads[0])
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-10, atol=1e-12, msg=name)
