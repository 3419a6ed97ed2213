"""Built-in text templates on rows shaped like the real datasets', and the template registry."""

from __future__ import annotations

import json
import textwrap

import pytest

from align_core.errors import RowRejected, UsageError
from align_core.shards.schema import Kind
from align_core.templates import get_template, known_templates, load_template_module

SUPERVISED, PREFERENCE, PROMPT_ONLY = Kind.SUPERVISED, Kind.PREFERENCE, Kind.PROMPT_ONLY


def turn(role: str, text: str) -> dict:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def user(text: str) -> dict:
    return turn("user", text)


def assistant(text: str) -> dict:
    return turn("assistant", text)


def meta(values: dict) -> str:
    return json.dumps(values, ensure_ascii=False, sort_keys=True)


# --- Alpaca ---------------------------------------------------------------------------------------

ALPACA_ROW = {
    "instruction": "Classify the following animal as a mammal or a reptile.",
    "input": "Crocodile",
    "output": "Reptile",
    "text": "Below is an instruction that describes a task...",
}


def test_alpaca_joins_instruction_and_input_into_the_user_turn():
    assert get_template("Alpaca").format(SUPERVISED, ALPACA_ROW) == {
        "messages": [user("Classify the following animal as a mammal or a reptile.\n\nCrocodile"), assistant("Reptile")],
        "meta": None,
    }


def test_alpaca_without_input_prompts_with_the_instruction_alone():
    row = {**ALPACA_ROW, "instruction": "Give three tips for staying healthy.", "input": ""}
    assert get_template("Alpaca").format(PROMPT_ONLY, row) == {
        "prompt": [user("Give three tips for staying healthy.")],
        "meta": None,
    }


# --- AA_T2T (align-anything text-to-text) --------------------------------------------------------

AA_SUPERVISED_ROW = {"prompt": "What is the capital of France?", "response": "The capital of France is Paris."}
AA_PREFERENCE_ROW = {
    "question": "How do I keep basil alive indoors?",
    "response_1": "Water it.",
    "response_2": "Give it 6+ hours of sun, water when the topsoil is dry, and pinch off flower buds.",
    "overall_response": 2,
    "prompt_following_rate_1": 1,
    "prompt_following_rate_2": 3,
    "safety_rate_1": 3,
    "safety_rate_2": 3,
    "p_response": "Response 2 gives actionable care steps.",
}


def test_aa_t2t_supervised_is_prompt_then_response():
    assert get_template("AA_T2T").format(SUPERVISED, AA_SUPERVISED_ROW) == {
        "messages": [user("What is the capital of France?"), assistant("The capital of France is Paris.")],
        "meta": None,
    }


def test_aa_t2t_preference_picks_overall_response_and_keeps_ratings():
    assert get_template("AA_T2T").format(PREFERENCE, AA_PREFERENCE_ROW) == {
        "prompt": [user("How do I keep basil alive indoors?")],
        "chosen": [assistant(AA_PREFERENCE_ROW["response_2"])],
        "rejected": [assistant("Water it.")],
        "meta": meta(
            {
                "chosen_response_id": 2,
                "prompt_following_rate_1": 1,
                "prompt_following_rate_2": 3,
                "safety_rate_1": 3,
                "safety_rate_2": 3,
            }
        ),
    }


def test_aa_t2t_prompt_only_reads_question_of_preference_rows():
    assert get_template("AA_T2T").format(PROMPT_ONLY, AA_PREFERENCE_ROW) == {
        "prompt": [user("How do I keep basil alive indoors?")],
        "meta": None,
    }


# --- PKU-SafeRLHF ---------------------------------------------------------------------------------

HARMLESS = {"Animal Abuse": False, "Privacy Violation": False, "Physical Harm": False}
PKU_ROW = {
    "prompt": "How can I get my neighbor's dog to stop barking at night?",
    "response_0": "Talk to your neighbor first; if that fails, contact your local animal control office.",
    "response_1": "Throw something at the dog whenever it barks until it learns to stay quiet.",
    "prompt_source": "Alpaca3-8B",
    "response_0_source": "Alpaca3-8B",
    "response_1_source": "Alpaca3-8B",
    "is_response_0_safe": True,
    "is_response_1_safe": False,
    "response_0_harm_category": HARMLESS,
    "response_1_harm_category": {**HARMLESS, "Animal Abuse": True},
    "response_0_severity_level": 0,
    "response_1_severity_level": 2,
    "better_response_id": 1,
    "safer_response_id": 0,
    "response_0_sha256": "4f1c",
    "response_1_sha256": "9a07",
}
PKU_ANNOTATIONS = {
    key: PKU_ROW[key]
    for key in PKU_ROW
    if key.endswith(("_source", "harm_category", "severity_level", "sha256"))
}


def test_pku_saferlhf_prefers_the_better_response_and_keeps_safety_labels():
    assert get_template("PKUSafeRLHF").format(PREFERENCE, PKU_ROW) == {
        "prompt": [user(PKU_ROW["prompt"])],
        "chosen": [assistant(PKU_ROW["response_1"])],
        "rejected": [assistant(PKU_ROW["response_0"])],
        "meta": meta(
            {
                "chosen_by": "better_response_id",
                "chosen_response_id": 1,
                "better_response_id": 1,
                "safer_response_id": 0,
                "is_response_0_safe": True,
                "is_response_1_safe": False,
                "is_chosen_safe": False,
                "is_rejected_safe": True,
                **PKU_ANNOTATIONS,
            }
        ),
    }


def test_pku_saferlhf_safer_option_prefers_the_safer_response():
    sample = get_template("PKUSafeRLHF", preference="safer").format(PREFERENCE, PKU_ROW)
    assert sample["chosen"] == [assistant(PKU_ROW["response_0"])]
    assert sample["rejected"] == [assistant(PKU_ROW["response_1"])]
    labels = json.loads(sample["meta"])
    assert (labels["chosen_by"], labels["chosen_response_id"]) == ("safer_response_id", 0)
    assert (labels["is_chosen_safe"], labels["is_rejected_safe"]) == (True, False)


def test_pku_saferlhf_reads_csv_strings_and_rows_without_safety_annotations():
    # The single-dimension release has no safety labels; CSV exports carry every value as text.
    row = {"prompt": "Hi?", "response_0": "Hello!", "response_1": "Go away.", "better_response_id": "0"}
    assert get_template("PKUSafeRLHF").format(PREFERENCE, row) == {
        "prompt": [user("Hi?")],
        "chosen": [assistant("Hello!")],
        "rejected": [assistant("Go away.")],
        "meta": meta({"chosen_by": "better_response_id", "chosen_response_id": 0, "better_response_id": 0}),
    }
    safe_text = {**row, "is_response_0_safe": "true", "is_response_1_safe": "false", "safer_response_id": "0"}
    assert json.loads(get_template("PKUSafeRLHF").format(PREFERENCE, safe_text)["meta"])["is_rejected_safe"] is False


def test_pku_saferlhf_prompt_only_is_the_prompt():
    assert get_template("PKUSafeRLHF").format(PROMPT_ONLY, PKU_ROW) == {"prompt": [user(PKU_ROW["prompt"])], "meta": None}


def test_pku_saferlhf_rejects_an_unknown_preference_criterion():
    with pytest.raises(UsageError, match="preference='kinder'.*better.*safer"):
        get_template("PKUSafeRLHF", preference="kinder")


# --- HH-RLHF --------------------------------------------------------------------------------------

HH_PREFIX = (
    "\n\nHuman: What are some good houseplants for a dark apartment?"
    "\n\nAssistant: Snake plants and ZZ plants tolerate low light.\n\nPothos is another easy option."
    "\n\nHuman: Which one needs the least water?"
)
HH_ROW = {
    "chosen": HH_PREFIX + "\n\nAssistant: The ZZ plant: water it about once a month.",
    "rejected": HH_PREFIX + "\n\nAssistant: All plants need water every day.",
}
HH_PROMPT = [
    user("What are some good houseplants for a dark apartment?"),
    assistant("Snake plants and ZZ plants tolerate low light.\n\nPothos is another easy option."),
    user("Which one needs the least water?"),
]


def test_hh_rlhf_splits_transcripts_into_shared_prompt_and_final_answers():
    assert get_template("HH-RLHF").format(PREFERENCE, HH_ROW) == {
        "prompt": HH_PROMPT,
        "chosen": [assistant("The ZZ plant: water it about once a month.")],
        "rejected": [assistant("All plants need water every day.")],
        "meta": None,
    }


def test_hh_rlhf_supervised_is_the_whole_chosen_transcript():
    assert get_template("HH-RLHF").format(SUPERVISED, HH_ROW) == {
        "messages": [*HH_PROMPT, assistant("The ZZ plant: water it about once a month.")],
        "meta": None,
    }


def test_hh_rlhf_prompt_only_ends_with_the_last_human_turn():
    assert get_template("HH-RLHF").format(PROMPT_ONLY, HH_ROW) == {"prompt": HH_PROMPT, "meta": None}


# --- UltraFeedback --------------------------------------------------------------------------------

UF_QUESTION = "Write a haiku about autumn rain."
UF_ROW = {
    "prompt": UF_QUESTION,
    "prompt_id": "a3f6c1e0b2",
    "chosen": [
        {"content": UF_QUESTION, "role": "user"},
        {"content": "Cold rain on red leaves\nthe gutter hums all evening\nsummer washes out", "role": "assistant"},
    ],
    "rejected": [
        {"content": UF_QUESTION, "role": "user"},
        {"content": "Autumn rain is wet.", "role": "assistant"},
    ],
    "messages": [{"content": UF_QUESTION, "role": "user"}],
    "score_chosen": 8.5,
    "score_rejected": 3.0,
}


def test_ultrafeedback_preference_keeps_scores_and_prompt_id():
    assert get_template("UltraFeedback").format(PREFERENCE, UF_ROW) == {
        "prompt": [user(UF_QUESTION)],
        "chosen": [assistant(UF_ROW["chosen"][1]["content"])],
        "rejected": [assistant("Autumn rain is wet.")],
        "meta": meta({"prompt_id": "a3f6c1e0b2", "score_chosen": 8.5, "score_rejected": 3.0}),
    }


def test_ultrafeedback_supervised_is_the_chosen_list():
    assert get_template("UltraFeedback").format(SUPERVISED, UF_ROW) == {
        "messages": [user(UF_QUESTION), assistant(UF_ROW["chosen"][1]["content"])],
        "meta": meta({"prompt_id": "a3f6c1e0b2"}),
    }


def test_ultrafeedback_prompt_only_reads_the_prompt_text():
    row = {"prompt": UF_QUESTION, "prompt_id": "a3f6c1e0b2", "chosen": [], "rejected": []}  # a train_gen row
    assert get_template("UltraFeedback").format(PROMPT_ONLY, row) == {
        "prompt": [user(UF_QUESTION)],
        "meta": meta({"prompt_id": "a3f6c1e0b2"}),
    }


# --- ShareGPT -------------------------------------------------------------------------------------

SHAREGPT_ROW = {
    "id": "QWJhYvA_0",
    "conversations": [
        {"from": "system", "value": "You are a concise assistant."},
        {"from": "human", "value": "Summarize the plot of Hamlet in one sentence."},
        {"from": "gpt", "value": "A Danish prince avenges his father's murder, and nearly everyone dies."},
        {"from": "human", "value": "Now in five words."},
        {"from": "gpt", "value": "Prince avenges father; all die."},
    ],
}
SHAREGPT_MESSAGES = [
    turn("system", "You are a concise assistant."),
    user("Summarize the plot of Hamlet in one sentence."),
    assistant("A Danish prince avenges his father's murder, and nearly everyone dies."),
    user("Now in five words."),
    assistant("Prince avenges father; all die."),
]


def test_sharegpt_maps_human_and_gpt_turns_to_user_and_assistant():
    assert get_template("ShareGPT").format(SUPERVISED, SHAREGPT_ROW) == {"messages": SHAREGPT_MESSAGES, "meta": None}


def test_sharegpt_prompt_only_stops_at_the_last_human_turn():
    assert get_template("ShareGPT").format(PROMPT_ONLY, SHAREGPT_ROW) == {"prompt": SHAREGPT_MESSAGES[:4], "meta": None}


# --- Messages -------------------------------------------------------------------------------------

MESSAGES_ROW = {
    "messages": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "Good morning!"}]},
        {"role": "assistant", "content": "Bonjour !"},
    ]
}


def test_messages_accepts_string_and_part_list_content():
    assert get_template("Messages").format(SUPERVISED, MESSAGES_ROW) == {
        "messages": [turn("system", "Answer in French."), user("Good morning!"), assistant("Bonjour !")],
        "meta": None,
    }


def test_messages_prompt_only_drops_the_final_assistant_turn():
    assert get_template("Messages").format(PROMPT_ONLY, MESSAGES_ROW) == {
        "prompt": [turn("system", "Answer in French."), user("Good morning!")],
        "meta": None,
    }


def test_messages_preference_with_implicit_prompt_splits_the_shared_prefix():
    row = {
        "chosen": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        "rejected": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"}],
    }
    assert get_template("Messages").format(PREFERENCE, row) == {
        "prompt": [user("2+2?")],
        "chosen": [assistant("4")],
        "rejected": [assistant("5")],
        "meta": None,
    }


def test_messages_preference_with_explicit_prompt_keeps_the_continuations():
    row = {
        "prompt": [{"role": "user", "content": "Name a prime."}],
        "chosen": [{"role": "assistant", "content": "7"}],
        "rejected": [{"role": "assistant", "content": "9"}],
    }
    assert get_template("Messages").format(PREFERENCE, row) == {
        "prompt": [user("Name a prime.")],
        "chosen": [assistant("7")],
        "rejected": [assistant("9")],
        "meta": None,
    }


# --- GSM8K ----------------------------------------------------------------------------------------

GSM8K_ROW = {
    "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
}


def test_gsm8k_supervised_keeps_the_worked_answer_and_the_final_number():
    assert get_template("GSM8K").format(SUPERVISED, GSM8K_ROW) == {
        "messages": [user(GSM8K_ROW["question"]), assistant(GSM8K_ROW["answer"])],
        "meta": meta({"final_answer": "72"}),
    }


def test_gsm8k_prompt_only_carries_the_final_answer_for_rewards():
    row = {**GSM8K_ROW, "answer": "Each box holds 250 pens, so 4 boxes hold <<4*250=1000>>1000.\n#### 1,000"}
    assert get_template("GSM8K").format(PROMPT_ONLY, row) == {
        "prompt": [user(GSM8K_ROW["question"])],
        "meta": meta({"final_answer": "1000"}),
    }


# --- Bad rows: one reason code per way a row can be wrong -----------------------------------------

BAD_ROWS = [
    ("Alpaca", SUPERVISED, {**ALPACA_ROW, "output": None}, "missing_field", "'output'"),
    ("Alpaca", SUPERVISED, {**ALPACA_ROW, "instruction": 42}, "wrong_type", "'instruction'"),
    ("Alpaca", SUPERVISED, {**ALPACA_ROW, "output": "  "}, "empty_text", "'output'"),
    ("AA_T2T", SUPERVISED, {"prompt": "Hi"}, "missing_field", "'response'"),
    ("AA_T2T", PREFERENCE, {**AA_PREFERENCE_ROW, "overall_response": 3}, "invalid_preference", "'overall_response'"),
    ("AA_T2T", PREFERENCE, {**AA_PREFERENCE_ROW, "overall_response": "first"}, "wrong_type", "'overall_response'"),
    ("AA_T2T", PREFERENCE, {**AA_PREFERENCE_ROW, "response_1": AA_PREFERENCE_ROW["response_2"]}, "identical_pair", ""),
    ("PKUSafeRLHF", PREFERENCE, {**PKU_ROW, "better_response_id": 2}, "invalid_preference", "'better_response_id'"),
    ("PKUSafeRLHF", PREFERENCE, {**PKU_ROW, "safer_response_id": -1}, "invalid_preference", "'safer_response_id'"),
    ("PKUSafeRLHF", PREFERENCE, {**PKU_ROW, "better_response_id": True}, "wrong_type", "'better_response_id'"),
    ("PKUSafeRLHF", PREFERENCE, {**PKU_ROW, "response_0": ""}, "empty_text", "'response_0'"),
    ("PKUSafeRLHF", PREFERENCE, {**PKU_ROW, "is_response_1_safe": "maybe"}, "wrong_type", "'is_response_1_safe'"),
    ("PKUSafeRLHF", PREFERENCE, {**PKU_ROW, "response_1_harm_category": ["Animal Abuse"]}, "wrong_type", "harm_category"),
    ("PKUSafeRLHF", PREFERENCE, {**PKU_ROW, "response_0_severity_level": "high"}, "wrong_type", "severity_level"),
    ("PKUSafeRLHF", PREFERENCE, {**PKU_ROW, "response_0": PKU_ROW["response_1"]}, "identical_pair", ""),
    ("HH-RLHF", PREFERENCE, {**HH_ROW, "rejected": "\n\nHuman: Other question\n\nAssistant: x"}, "unsplittable_transcript", "shared prompt"),
    ("HH-RLHF", PREFERENCE, {**HH_ROW, "chosen": "\n\nHuman: Hello there"}, "unsplittable_transcript", "'chosen'"),
    ("HH-RLHF", PREFERENCE, {**HH_ROW, "chosen": "Hello\n\nHuman: Hi\n\nAssistant: Yo"}, "unsplittable_transcript", "'chosen'"),
    ("HH-RLHF", SUPERVISED, {**HH_ROW, "chosen": "\n\nHuman: Hi\n\nHuman: Again\n\nAssistant: Yes"}, "bad_roles", "chosen[1]"),
    ("HH-RLHF", SUPERVISED, {**HH_ROW, "chosen": "\n\nAssistant: Hi\n\nHuman: Hey"}, "bad_roles", "chosen[0]"),
    ("HH-RLHF", PROMPT_ONLY, {"chosen": "\n\nUser: Hi\n\nBot: Hello"}, "unsplittable_transcript", "'chosen'"),
    ("HH-RLHF", SUPERVISED, {**HH_ROW, "chosen": HH_ROW["chosen"] + "\n\nHuman: Thanks"}, "bad_roles", "end with the assistant"),
    ("HH-RLHF", PREFERENCE, {**HH_ROW, "chosen": HH_PREFIX + "\n\nAssistant:"}, "empty_text", "chosen[3]"),
    ("HH-RLHF", PREFERENCE, {**HH_ROW, "rejected": HH_ROW["chosen"]}, "identical_pair", ""),
    ("HH-RLHF", PREFERENCE, {"chosen": HH_ROW["chosen"]}, "missing_field", "'rejected'"),
    ("UltraFeedback", PREFERENCE, {**UF_ROW, "rejected": UF_ROW["rejected"][:1]}, "bad_roles", "rejected must end"),
    ("UltraFeedback", PREFERENCE, {**UF_ROW, "rejected": [{"content": "Other", "role": "user"}, UF_ROW["rejected"][1]]}, "unsplittable_transcript", "shared prompt"),
    ("UltraFeedback", PREFERENCE, {**UF_ROW, "score_chosen": "high"}, "wrong_type", "'score_chosen'"),
    ("UltraFeedback", PREFERENCE, {**UF_ROW, "chosen": [{"content": "x", "role": "tool"}]}, "bad_roles", "chosen[0].role"),
    ("UltraFeedback", PREFERENCE, {**UF_ROW, "chosen": "not a list"}, "wrong_type", "'chosen'"),
    ("UltraFeedback", PREFERENCE, {**UF_ROW, "rejected": []}, "empty_text", "'rejected'"),
    ("ShareGPT", SUPERVISED, {"conversations": [{"from": "bing", "value": "Hi"}]}, "bad_roles", "conversations[0].from"),
    ("ShareGPT", SUPERVISED, {"conversations": SHAREGPT_ROW["conversations"][:4]}, "bad_roles", "end with the assistant"),
    ("ShareGPT", SUPERVISED, {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "x"}]}, "empty_text", "'value'"),
    ("ShareGPT", SUPERVISED, {"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}, "missing_field", "'value'"),
    ("ShareGPT", SUPERVISED, {"conversations": ["human: hi"]}, "wrong_type", "conversations[0]"),
    ("ShareGPT", PROMPT_ONLY, {"conversations": [{"from": "system", "value": "Be brief."}]}, "bad_roles", "no user turn"),
    ("Messages", SUPERVISED, {"messages": [{"role": "user", "content": 7}]}, "wrong_type", "messages[0].content"),
    ("Messages", SUPERVISED, {"messages": MESSAGES_ROW["messages"][:2]}, "bad_roles", "end with the assistant"),
    ("Messages", SUPERVISED, {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, "bad_roles", "messages[1]"),
    (
        "Messages",
        PREFERENCE,
        {
            "prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
            "chosen": [{"role": "user", "content": "x"}],
            "rejected": [{"role": "user", "content": "y"}],
        },
        "bad_roles",
        "chosen must end",
    ),
    ("Messages", PREFERENCE, {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}, "missing_field", "'rejected'"),
    ("GSM8K", SUPERVISED, {**GSM8K_ROW, "answer": "She sold 72 clips."}, "missing_field", "####"),
    ("GSM8K", SUPERVISED, {**GSM8K_ROW, "answer": "She sold 72 clips.\n#### seventy-two"}, "wrong_type", "'seventy-two'"),
    ("GSM8K", PROMPT_ONLY, {"question": "How many?"}, "missing_field", "'answer'"),
]


@pytest.mark.parametrize(
    "name, kind, raw, reason, detail_mentions",
    BAD_ROWS,
    ids=[f"{name}-{kind.value}-{reason}-{i}" for i, (name, kind, _, reason, _) in enumerate(BAD_ROWS)],
)
def test_bad_row_is_rejected_with_its_reason(name, kind, raw, reason, detail_mentions):
    with pytest.raises(RowRejected) as rejected:
        get_template(name).format(kind, raw)
    assert rejected.value.reason == reason
    assert detail_mentions in rejected.value.detail


# --- Registry -------------------------------------------------------------------------------------


def test_every_built_in_template_is_registered():
    expected = {"Alpaca", "AA_T2T", "PKUSafeRLHF", "HH-RLHF", "UltraFeedback", "ShareGPT", "Messages", "GSM8K"}
    assert expected <= set(known_templates())


def test_unknown_template_name_lists_the_known_ones():
    with pytest.raises(UsageError) as error:
        get_template("Alpacca")
    assert "unknown template 'Alpacca'" in str(error.value)
    assert all(name in str(error.value) for name in ("Alpaca", "HH-RLHF", "UltraFeedback"))


def test_option_unknown_to_a_template_is_a_usage_error():
    with pytest.raises(UsageError, match="has no option system_prompt; its options: none"):
        get_template("Alpaca", system_prompt="Be nice.")
    with pytest.raises(UsageError, match="has no option prefrence; its options: preference"):
        get_template("PKUSafeRLHF", prefrence="safer")


def test_kind_a_template_cannot_produce_is_a_usage_error():
    with pytest.raises(UsageError, match="cannot produce 'preference'.*supervised, prompt_only"):
        get_template("ShareGPT").format(PREFERENCE, SHAREGPT_ROW)


def write_user_template(path, answer_field: str) -> str:
    path.write_text(
        textwrap.dedent(
            f"""
            from align_core.shards.conversation import text_message
            from align_core.templates import Template, register_template
            from align_core.templates.base import text_field

            @register_template("TestQA")
            class TestQA(Template):
                def format_supervised_sample(self, raw):
                    answer = text_field(raw, {answer_field!r})
                    return [text_message("user", text_field(raw, "q")), text_message("assistant", answer)], None
            """
        )
    )
    return str(path)


def test_user_template_module_registers_and_formats(tmp_path):
    load_template_module(write_user_template(tmp_path / "qa_templates.py", "a"))
    assert "TestQA" in known_templates()
    assert get_template("TestQA").format(SUPERVISED, {"q": "Why?", "a": "Because."}) == {
        "messages": [user("Why?"), assistant("Because.")],
        "meta": None,
    }


def test_code_version_follows_the_template_source(tmp_path):
    (tmp_path / "v1").mkdir(), (tmp_path / "v1_copy").mkdir(), (tmp_path / "v2").mkdir()
    versions = {}
    for folder, answer_field in (("v1", "a"), ("v1_copy", "a"), ("v2", "answer")):
        load_template_module(write_user_template(tmp_path / folder / "qa_templates.py", answer_field))
        versions[folder] = get_template("TestQA").code_version
    assert versions["v1"] == versions["v1_copy"]  # same source, another file: same version
    assert versions["v1"] != versions["v2"]


def test_missing_template_module_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_template_module(str(tmp_path / "absent.py"))
