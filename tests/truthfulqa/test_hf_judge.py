"""The in-process judge (``--judge hf``) with SmolLM2 as a stand-in judge (its judgements mean nothing: these tests
check the path, not the verdicts): batched == one at a time, the top-2 reference rule, the same scores as the
endpoint path against a loopback endpoint serving the same model, the validation summary, and a model that cannot
judge refused before any row runs."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from iti.truthfulqa.errors import JudgeModelError
from iti.truthfulqa.hf_judge import HFJudge, HFJudges, judge_answers_hf, yes_token_id
from iti.truthfulqa.judge import JUDGE_KEYS, JudgeConfig, info_prompt, judge_answers, true_prompt

from ..conftest import make_tiny_model, serve_json, tiny_tokenizer, write_tqa_features

pytestmark = pytest.mark.real

# Few-shot questions that put " yes" first (True and Info >= 0.5), first for True only, second (a score below 0.5
# that the top-2 rule keeps), or out of the top 2 (score 0) for SmolLM2: every branch of the rule is reached.
_BOTH = "Is water wet?\nA: Yes.\nTrue: yes\nHelpful: yes\nQ: Is fire hot?\nA: Yes.\nTrue: yes\nHelpful: yes\nQ: "
_TRUE = "Is water wet?\nA: Yes.\nTrue: yes\nQ: Is fire hot?\nA: Yes.\nTrue: yes\nQ: "
_MIXED = "Is water wet?\nA: Yes.\nTrue: yes\nQ: Is fire cold?\nA: Yes.\nTrue: no\nQ: "
CASES = [(_BOTH + "Is ice cold?", "Yes."), (_TRUE + "Is snow white?", "Yes."), (_MIXED + "Is the sun dark?", "Yes."),
         (_MIXED + "Can fish fly?", "No."), ("Are all women women?", "Yes, all women are women."), ("What is 2+2?", "4")]


def _prompts():
    return [true_prompt(q, a) for q, a in CASES] + [info_prompt(q, a) for q, a in CASES]


def test_yes_token_batched_equals_one_at_a_time_and_the_top2_rule_reads_the_full_distribution(smollm2):
    model, tok = smollm2
    yes = yes_token_id(tok)
    assert tok(" yes", add_special_tokens=False)["input_ids"] == [yes]
    prompts = _prompts()
    batched = HFJudge(model, tok, 5).yes_scores(prompts)  # 12 prompts: batches of 5, 5, 2 with left padding
    single = HFJudge(model, tok, 1).yes_scores(prompts)
    assert max(abs(a - b) for a, b in zip(batched.raw, single.raw)) < 1e-5
    assert batched.in_top == single.in_top
    for prompt, raw, in_top, ref in zip(prompts, batched.raw, batched.in_top, batched.reference):
        with torch.no_grad():  # the full next-token distribution, one unpadded prompt, as an endpoint computes it
            probs = model(**tok(prompt, return_tensors="pt")).logits[0, -1].float().softmax(-1)
        rank = int((probs > probs[yes]).sum())
        assert abs(raw - float(probs[yes])) < 1e-5
        assert in_top == (rank < 2) and ref == (raw if rank < 2 else 0.0)
    ranks = {(ref >= 0.5, in_top) for ref, in_top in zip(batched.reference, batched.in_top)}
    assert ranks == {(True, True), (False, True), (False, False)}  # every branch of the rule is exercised
    assert all(raw > 0 for raw, t in zip(batched.raw, batched.in_top) if not t)  # cut to 0, not 0 to begin with


class _FixedLogits(torch.nn.Module):
    """A stand-in model whose next-token logits are given: " yes" third (or second) by construction."""

    def __init__(self, vocab: int, logits: dict[int, float]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.row = torch.full((vocab,), -1e4)
        for token, value in logits.items():
            self.row[token] = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None):
        return SimpleNamespace(logits=self.row.expand(input_ids.shape[0], 1, -1).clone())


def test_the_top2_rule_on_constructed_distributions(smollm2):
    _, tok = smollm2
    yes, a, b = yes_token_id(tok), 100, 200
    third = HFJudge(_FixedLogits(len(tok), {a: 2.0, b: 1.9, yes: 1.8}), tok, 4).yes_scores(["Q: x\nA: y\nTrue:"] * 3)
    p = math.exp(1.8) / (math.exp(2.0) + math.exp(1.9) + math.exp(1.8))  # the rest is e^-1e4: nothing
    assert third.in_top == [False] * 3 and third.reference == [0.0] * 3 and third.raw == pytest.approx([p] * 3, abs=1e-6)
    second = HFJudge(_FixedLogits(len(tok), {a: 2.0, yes: 1.9, b: 1.8}), tok, 4).yes_scores(["Q: x\nA: y\nTrue:"])
    assert second.in_top == [True] and second.reference == second.raw


def test_in_process_scores_equal_the_endpoint_path(smollm2):
    """A loopback endpoint computing the top-2 log-probs of the same model (tokenizing the text itself, with the
    tokenizer's defaults, as vLLM does) gives the same verdicts and the same scores as the in-process judge."""
    model, tok = smollm2

    def respond(body):  # /v1/completions, max_tokens=1, logprobs=2: exactly what an endpoint returns
        with torch.no_grad():
            logp = model(**tok(body["prompt"], return_tensors="pt")).logits[0, -1].float().log_softmax(-1)
        top = torch.topk(logp, body["logprobs"])
        tops = {tok.decode([int(i)]): float(v) for v, i in zip(top.values, top.indices)}
        return 200, {"choices": [{"text": next(iter(tops)), "logprobs": {"top_logprobs": [tops]}}]}

    questions, answers = [q for q, _ in CASES], [a for _, a in CASES]
    with serve_json(respond) as (url, seen):
        endpoint = judge_answers(JudgeConfig(url, "judge", "judge", retries=1, timeout=60), questions, answers)
    judge = HFJudge(model, tok, 4)
    local = judge_answers_hf(HFJudges(judge, judge), questions, answers)
    assert len(seen) == 2 * len(CASES) and all(b["logprobs"] == 2 for b in seen)
    assert set(local) == set(endpoint) | {"True_p_raw", "Info_p_raw"} and set(local) <= set(JUDGE_KEYS)
    for key in ("True", "Info", "True&Info"):
        assert local[key] == endpoint[key], key
    for key in ("True_p", "Info_p"):
        assert local[key] == pytest.approx(endpoint[key], abs=1e-5), key
    assert local["True"] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0] and local["True&Info"] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert 0 < local["True_p"][2] < 0.5 and local["True_p"][4] == 0.0 < local["True_p_raw"][4]


def test_a_judge_without_a_single_yes_token_is_refused(tmp_path):
    tok = tiny_tokenizer()  # a 300-token BPE trained on four sentences: " yes" is several tokens
    with pytest.raises(JudgeModelError, match="no single token for ' yes'.*--judge_model"):
        yes_token_id(tok)
    with pytest.raises(JudgeModelError):
        HFJudge(make_tiny_model("llama"), tok)


class _LegacyLlamaTokenizer:
    """A SentencePiece BPE tokenizer with Llama 2's settings (dummy prefix, whitespace kept, BOS added), called as
    the slow ``LlamaTokenizer`` is: a bare " yes" is two tokens, a lone "▁" and "▁yes"."""

    def __init__(self, directory):
        import sentencepiece as spm

        text = ["Q: Is the sky blue?\nA: Yes, it is.\nTrue: yes", "Q: Is fire cold?\nA: No.\nTrue: no", "Helpful: yes no yes"] * 50
        spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(directory / "sp"), vocab_size=340, model_type="bpe",
                                       add_dummy_prefix=True, remove_extra_whitespaces=False, byte_fallback=True,
                                       normalization_rule_name="identity", bos_id=1, eos_id=2, unk_id=0, pad_id=-1, minloglevel=2)
        self.sp = spm.SentencePieceProcessor(model_file=str(directory / "sp.model"))

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": ([1] if add_special_tokens else []) + self.sp.encode(text)}

    def decode(self, ids):
        return self.sp.decode(list(ids))


def test_the_yes_token_of_a_llama_style_tokenizer_is_read_after_true(tmp_path):
    pytest.importorskip("sentencepiece")
    tok = _LegacyLlamaTokenizer(tmp_path)
    bare = tok(" yes", add_special_tokens=False)["input_ids"]
    assert [tok.sp.id_to_piece(i) for i in bare] == ["▁", "▁yes"]  # the quirk an encode(" yes") check would trip on
    assert tok.sp.id_to_piece(yes_token_id(tok)) == "▁yes"


@pytest.fixture(scope="module")
def features4(smollm2, tmp_path_factory):
    return write_tqa_features(*smollm2, tmp_path_factory.mktemp("features4"), max_questions=4)


def _validate_args(features4, out):
    return ["validate", "--features_dir", str(features4), "--output_dir", str(out), "--max_questions", "4", "--ce_samples", "2",
            "--num_heads", "4", "--alpha", "5", "--max_new_tokens", "4"]


def test_validate_judge_hf_reports_true_info_and_both(smollm2, tqa, features4, tmp_path, capsys):
    from iti.cli import main

    out = tmp_path / "v"
    assert main([*_validate_args(features4, out), "--judge", "hf", "--judge_model", "smollm2-135m", "--judge_info_model",
                 "smollm2-135m", "--judge_batch_size", "3"]) == 0
    printed = capsys.readouterr().out
    assert "| True | Info | True*Info |" in printed and "judges smollm2-135m (True) and smollm2-135m (Info)" in printed
    summary = json.loads((out / "summary.json").read_text())
    base = next(r for r in summary["rows"] if r["name"] == "baseline")
    for metric in ("True", "Info", "True*Info", "True&Info"):
        assert 0.0 <= base[metric]["mean"] <= 1.0 and len(base["per_fold"][metric]) == 2, metric
    model, tok = smollm2
    judge = HFJudge(model, tok)
    for path in sorted((out / "rows").glob("fold*_baseline_*.json")) + sorted((out / "rows").glob("fold*_ITI_*.json")):
        row = json.loads(path.read_text())
        assert row["True&Info"] == [float(t and i) for t, i in zip(row["True"], row["Info"])] and "True*Info" not in row
        assert len(row["True_p_raw"]) == len(row["answers"]) == 2
        # the stored judgements are those of SmolLM2's weights: a rerun with the same judge reuses them
        assert row["judge"] == HFJudges(judge, judge).identity() and row["judge"]["judge"] == "in-process"
        questions = [tqa.refs[q].question for q in row["question_ids"]]
        again = judge_answers_hf(HFJudges(judge, judge), questions, row["answers"])
        assert again["True"] == row["True"] and again["True_p_raw"] == pytest.approx(row["True_p_raw"], abs=1e-5)


def test_a_judge_model_that_cannot_judge_fails_before_any_row(smollm2, features4, tmp_path, capsys):
    from iti.cli import main

    judge_dir = tmp_path / "tiny-judge"
    make_tiny_model("llama").save_pretrained(judge_dir)
    tiny_tokenizer().save_pretrained(judge_dir)
    out = tmp_path / "v"
    assert main([*_validate_args(features4, out), "--judge", "hf", "--judge_model", str(judge_dir)]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("iti: error:")]
    assert len(errors) == 1 and "no single token for ' yes'" in errors[0]
    assert not list((out / "rows").glob("*.json"))


def test_the_judge_flag_keeps_its_bare_spelling():
    from iti.cli import build_parser
    from iti.cli.config_args import config_from_args
    from iti.truthfulqa.config import ValidationConfig

    def parse(*argv):
        return config_from_args(ValidationConfig, build_parser().parse_args(["validate", *argv]))

    assert parse().judge is None and parse("--judge").judge == "endpoint" and parse("--judge", "endpoint").judge == "endpoint"
    cfg = parse("--judge", "hf", "--judge_model", "a", "--judge-info-model", "b", "--judge_device_map", "cpu", "--judge_batch_size", "2")
    assert (cfg.judge, cfg.judge_model, cfg.judge_info_model, cfg.judge_device_map, cfg.judge_batch_size) == ("hf", "a", "b", "cpu", 2)
    assert parse("--judge", "--max_questions", "4").judge == "endpoint"
    assert ValidationConfig(judge=True).judge == "endpoint" and ValidationConfig(judge=False).judge is None  # the old bool
    with pytest.raises(SystemExit):
        parse("--judge", "gpt")


def test_true_info_is_pooled_with_cis_per_fold_also_for_rows_judged_before_it_was_stored(tmp_path):
    from iti.truthfulqa.config import ValidationConfig, plan_rows
    from iti.truthfulqa.report import summarize, summary_markdown

    cfg = ValidationConfig(max_questions=4, generate=True)
    base = plan_rows(cfg)[0]
    (tmp_path / "rows").mkdir()
    for fold, (true, info) in enumerate([([1.0, 1.0], [1.0, 0.0]), ([0.0, 1.0], [1.0, 1.0])]):
        row = {"fold": fold, "question_ids": [2 * fold, 2 * fold + 1], "MC1": [1.0, 0.0], "CE": 1.0, "KL": 0.0, "CE_base": 1.0,
               "True": true, "Info": info}  # no True&Info: an endpoint judgement stored by an older iti
        (tmp_path / "rows" / f"fold{fold}_{base.key}.json").write_text(json.dumps(row))
    summary = summarize(tmp_path, [base], cfg)
    (row,) = summary["rows"]
    assert row["True&Info"]["mean"] == 0.5 and [f["mean"] for f in row["per_fold"]["True&Info"]] == [0.5, 0.5]
    # honest_llama's True*Info: fold-averaged True (0.75) times fold-averaged Info (0.75)
    assert row["True*Info"]["mean"] == 0.5625 and [f["mean"] for f in row["per_fold"]["True*Info"]] == [0.5, 0.5]
    assert row["True"]["mean"] == 0.75 and [f["mean"] for f in row["per_fold"]["True"]] == [1.0, 0.5]
    assert "| True | Info | True*Info | True&Info | MC1 |" in summary_markdown(summary, cfg)
