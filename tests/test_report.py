"""End to end: cache -> `interp-bench analyze` -> `interp-bench report`, rendered in Chromium."""

import json
import re
import shutil
import subprocess
from urllib.parse import quote

import pytest
import torch

from activation_cache.streams import cache_stream, model_stream
from interp_bench.analysis.figures import density_histogram, feature_card, recon_error_figure
from interp_bench.analysis.report import CHUNK, _r
from interp_bench.analysis.top_examples import AnalysisConfig, analyze, load_feature_index
from interp_bench.cli import main
from interp_bench.config import DictionaryConfig
from interp_bench.dictionaries import SparseDictionary, save_dictionary

HOOK = "L1.resid_post"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def tokens(gpt2_tokenizer):
    torch.manual_seed(0)
    t = torch.randint(0, 50000, (12, 32))
    t[:, 0] = gpt2_tokenizer.bos_token_id
    return t


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model, tokens):
    from activation_cache.cache import cache_activations

    root = tmp_path_factory.mktemp("run")
    cache_activations(tiny_model, tokens, [HOOK], root / "acts", dtype="float32",
                      shard_tokens=100, progress=False)  # fmt: skip
    torch.manual_seed(1)
    cfg = DictionaryConfig(d_in=64, d_sae=96, arch="topk", k=6, hook_in=HOOK)
    save_dictionary(SparseDictionary(cfg), root / "sae")
    return root


def test_analyze_command_matches_direct_pass(run_dir, tiny_model, tokens, tmp_path, capsys):
    """The CLI over cached shards gives the same index as the pass straight from the model."""
    rc = main(["analyze", "--dictionary", str(run_dir / "sae"), "--activations",
               str(run_dir / "acts"), "--model", "none", "--top-k", "5", "--window", "4",
               "--batch-tokens", "50"])  # fmt: skip
    assert rc == 0, capsys.readouterr()
    assert "feature index" in capsys.readouterr().out
    cached = load_feature_index(run_dir / "sae" / "analysis")
    from interp_bench.dictionaries import load_dictionary

    d = load_dictionary(run_dir / "sae")
    direct = analyze(d, model_stream(tiny_model, tokens, [HOOK], batch_seqs=5), tmp_path,
                     AnalysisConfig(top_k=5, window=4))  # fmt: skip
    assert cached.meta["n_tokens"] == direct.meta["n_tokens"] == 12 * 31
    assert torch.equal(cached.arrays["fire_count"], direct.arrays["fire_count"])
    assert torch.equal(cached.arrays["top_index"], direct.arrays["top_index"])
    assert torch.equal(cached.arrays["top_tokens"], direct.arrays["top_tokens"])
    torch.testing.assert_close(cached.arrays["top_acts"], direct.arrays["top_acts"])
    # TopK's sparse reconstruction path equals forward()
    x = torch.cat([b[HOOK] for b in model_stream(tiny_model, tokens, [HOOK])])
    bos = direct.stream["pos"] == 0
    want = (d(x) - x).pow(2).sum(-1)
    torch.testing.assert_close(direct.stream["sq_err"][~bos], want[~bos], rtol=1e-4, atol=1e-5)


def test_analyze_bad_input(run_dir, tmp_path, capsys):
    assert main(["analyze", "--dictionary", str(run_dir / "sae"),
                 "--activations", str(tmp_path)]) == 2  # fmt: skip
    assert "interp-bench cache" in capsys.readouterr().err
    other = DictionaryConfig(d_in=64, d_sae=8, arch="topk", k=2, hook_in="L0.resid_post")
    save_dictionary(SparseDictionary(other), tmp_path / "other")
    assert main(["analyze", "--dictionary", str(tmp_path / "other"), "--activations",
                 str(run_dir / "acts"), "--model", "none"]) == 2  # fmt: skip
    assert "L1.resid_post" in capsys.readouterr().err
    assert main(["analyze", "--dictionary", str(run_dir / "sae"), "--activations",
                 str(run_dir / "acts"), "--model", "none", "--tokens", "100",
                 "--out", str(tmp_path / "short")]) == 0  # fmt: skip
    short = load_feature_index(tmp_path / "short")
    assert short.meta["n_stream"] == 100 and short.meta["n_tokens"] == 100 - 4  # 4 BOS


@pytest.fixture(scope="module")
def report_html(run_dir, tiny_model, tokens, tmp_path_factory):
    """An index with token strings and logit effects (from the model), and its report."""
    from interp_bench.analysis.report import write_report
    from interp_bench.dictionaries import load_dictionary

    out = tmp_path_factory.mktemp("index")
    d = load_dictionary(run_dir / "sae")
    analyze(d, model_stream(tiny_model, tokens, [HOOK]), out, AnalysisConfig(window=5),
            model=tiny_model)  # fmt: skip
    assert main(["report", str(out)]) == 0
    return write_report(out, out / "report.html")


def page_data(page: str) -> dict:
    return json.loads(re.search(r'id="data" type="application/json">(.*?)</script>', page,
                                re.S).group(1))  # fmt: skip


def chunk_data(path) -> dict:
    """A chunk file's data: `ibChunk(k, {...});` after our header comment."""
    text = path.read_text()
    k, body = re.fullmatch(r"/\*[^*]*\*/\nibChunk\((\d+),JSON\.parse\((.*)\)\);\n", text,
                           re.S).groups()  # fmt: skip
    assert path.name == f"{int(k):04d}.js"
    return json.loads(json.loads(body))  # a JS string literal of script-safe JSON


def test_report_is_self_contained(report_html):
    page = report_html.read_text()
    chunks = sorted((report_html.parent / "report_chunks").iterdir())
    for text in [page] + [c.read_text() for c in chunks]:
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
        assert "cdn" not in text.lower()
    data = page_data(page)
    assert data["chunks"] == "report_chunks/" and len(chunks) == -(-96 // data["chunk"])
    assert '"t":[' not in page  # examples live in the chunks, not in the page
    recs = [r for c in chunks for r in chunk_data(c)["f"]]
    vocab = data["vocab"] | {k: v for c in chunks for k, v in chunk_data(c)["v"].items()}
    live = [i for i, n in enumerate(data["summary"]["n"]) if n > 0]
    assert live and all(recs[i]["t"] and len(recs[i]["p"]) == 10 for i in live)
    assert 'class="card' not in page  # cards only exist once the page's JS has run
    index = load_feature_index(report_html.parent)
    for i in live[:10]:  # the page's records are the index's cards, compacted
        card, f = index.feature(i), recs[i]
        assert [e[2] for e in f["t"]] == [e["token_ids"] for e in card["top"][:8]]
        assert [e[1] for e in f["t"]] == [e["center"] for e in card["top"][:8]]
        assert data["summary"]["c"][i] == [e["token_ids"][e["center"]] for e in card["top"][:8]]
        assert max(max(e[3]) for e in f["t"]) == 100  # context acts in % of the max
        assert all(vocab[str(t)] == index.token_str(t) for e in f["t"] for t in e[2])
        # per example: next token, its direct effect, act / norm scale
        assert [e[4:] for e in f["t"]] == [
            [e["next_id"], _r(e["next_effect"]), _r(e["direct_mult"])] for e in card["top"][:8]
        ]


def _chromium(args, tmp_path, timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", "--proxy-server=127.0.0.1:9",  # no network, even by mistake
           f"--user-data-dir={tmp_path / 'profile'}", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.long
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt install chromium)")
def test_report_renders_in_chromium(report_html, tmp_path):
    url = report_html.resolve().as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path).stdout
    n_cards = dom.count('class="card')
    assert n_cards >= 10, dom[-2000:]
    assert "Latent 0" in dom and "Top activations" in dom and "Promoted tokens" in dom
    assert dom.count('class="de"') >= 10 and "next " in dom  # per-example direct effects
    assert "<svg" in dom  # density and activation histograms were drawn
    # search by token (the activating token of a dense latent's best example) and by id
    index = load_feature_index(report_html.parent)
    card = index.feature(int(index.by_density()[0]))
    token = card["top"][0]["tokens"][card["top"][0]["center"]]
    dom = _chromium(["--dump-dom", url + "#q=" + quote(token)], tmp_path).stdout
    found = {int(i) for i in re.findall(r"Latent (\d+)<", dom)}
    assert card["id"] in found and found <= set(index.search_token(token))
    dom = _chromium(["--dump-dom", url + "#q=3"], tmp_path).stdout
    assert re.findall(r"Latent (\d+)<", dom) == ["3"]
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,900", url], tmp_path)
    assert shot.exists() and shot.stat().st_size > 10_000


def test_figures_build(report_html):
    index = load_feature_index(report_html.parent)
    live = int(index.by_density()[0])
    for fig in (density_histogram(index), feature_card(index, live), recon_error_figure(index)):
        assert fig.data and fig.to_json()
    rows = feature_card(index, live).data[-1].y  # one heatmap row per top example
    assert len(rows) == len(set(rows)) == min(10, len(index.feature(live)["top"]))
    assert "dead" in density_histogram(index).layout.title.text


def test_nearest_latents_by_decoder_cosine(report_html):
    """Each card lists the latents whose decoder rows are closest to its own, in order."""
    from interp_bench.analysis.neighbours import nearest_latents

    index = load_feature_index(report_html.parent)
    W = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    W[7] = W[3] * 2  # same direction, other norm
    nb = nearest_latents(W, n=5, chunk=16)
    assert nb["neighbour_ids"][3, 0] == 7 and nb["neighbour_ids"][7, 0] == 3
    assert float(nb["neighbour_cos"][3, 0]) == pytest.approx(1.0, abs=1e-3)
    sims = W @ W.T / (W.norm(dim=1)[:, None] * W.norm(dim=1)[None])
    sims.fill_diagonal_(-2)
    assert torch.equal(nb["neighbour_ids"][:, :5].long(), sims.topk(5, dim=1).indices)
    card = index.feature(0)
    assert len(card["neighbours"]) == 8 and 0 not in [j for j, _ in card["neighbours"]]
    cos = [c for _, c in card["neighbours"]]
    assert cos == sorted(cos, reverse=True)
    page = report_html.read_text()
    assert "Similar latents (decoder cosine)" in page
    assert '\\"nb\\":[[' in (report_html.parent / "report_chunks" / "0000.js").read_text()


@pytest.mark.long
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt install chromium)")
def test_browser_of_16k_latents_loads_cards_lazily(tmp_path, gpt2_tokenizer):
    """Every latent live, 16,384 of them: the page holds only the summary, and a card of a latent
    in the last chunk loads its examples from disk (file://, no network)."""
    from analysis_helpers import batches, planted_stream, relu_dictionary

    from interp_bench.analysis.report import write_report

    n = 16_384
    g = torch.Generator().manual_seed(0)
    d = relu_dictionary(torch.randn(16, n, generator=g), torch.full((n,), 0.5),
                        torch.randn(n, 16, generator=g), "L0.resid_post")  # fmt: skip
    cfg = AnalysisConfig(top_k=4, window=3, reservoir=8, n_quantiles=2, per_quantile=1)
    index = analyze(d, batches(planted_stream(n_seq=20), max_size=200), tmp_path / "idx", cfg,
                    tokenizer=gpt2_tokenizer)  # fmt: skip
    assert int((index.arrays["fire_count"] > 0).sum()) == n
    page = write_report(tmp_path / "idx", n_top=4, per_quantile=1)
    chunks = list((page.parent / "report_chunks").iterdir())
    data_bytes = sum(c.stat().st_size for c in chunks)
    assert len(chunks) == n // CHUNK
    assert page.stat().st_size < 48 * n and page.stat().st_size < data_bytes / 8

    latent = n - 5  # in the last chunk
    url = page.resolve().as_uri() + f"#q={latent}"
    dom = _chromium(["--dump-dom", url], tmp_path).stdout
    assert re.findall(r"Latent (\d+)<", dom) == [str(latent)]
    card = index.feature(latent)
    assert "Top activations" in dom and "loading examples\u2026</div>" not in dom
    body = dom.split(f'id="latent-{latent}"')[1]
    shown = [float(m) for m in re.findall(r'<span class="a">([^<]*)</span>', body)]
    assert shown[: len(card["top"])] == pytest.approx([e["act"] for e in card["top"]], rel=5e-3)
    # without its chunk file the card says which file is missing, the rest of the page works
    (page.parent / "report_chunks" / f"{latent // CHUNK:04d}.js").unlink()
    dom = _chromium(["--dump-dom", url], tmp_path).stdout
    assert f"could not load report_chunks/{latent // CHUNK:04d}.js" in dom


def test_report_folders_are_replaced_only_when_ours(report_html, run_dir, tmp_path):
    """Re-analysing into an index folder that holds the browser works; a chunk folder holding
    anything else is refused with nothing changed."""
    from interp_bench.analysis.report import write_report
    from interp_bench.dictionaries import load_dictionary

    index = tmp_path / "index"
    shutil.copytree(report_html.parent, index)
    d = load_dictionary(run_dir / "sae")
    analyze(d, cache_stream(run_dir / "acts", [HOOK], 64), index, AnalysisConfig(top_k=3, window=2))
    assert not (index / "report_chunks").exists()  # the old browser went with the old index
    write_report(index, tmp_path / "x.html")
    (tmp_path / "x_chunks" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="does not hold only interp-bench report chunks"):
        write_report(index, tmp_path / "x.html")
    assert (tmp_path / "x_chunks" / "notes.txt").read_text() == "mine"
