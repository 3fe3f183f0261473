"""Rows of the scoring and export tables. Field descriptions are the data dictionary.

Nested conversation fields (``messages``, ``tools``, ``prompt``, ``chosen`` ...) are JSON
strings in Parquet: their shapes vary per row (tool arguments, schemas), which Arrow
loaders either merge into null-padded structs or refuse. The JSONL files under
``exports/`` carry the same values as real nested objects.
"""

from __future__ import annotations

from pydantic import Field

from schemas.records import _Row
from schemas.tables import TableSpec

CATEGORIES = ("accepted", "partially_accepted", "rejected", "needs_human_review")


class TaskRow(_Row):
    """One human prompt and all the agent's work until the next human prompt."""

    task_id: str = Field(description="H(session_id, prompt_number) = prompts.prompt_id.")
    session_id: str
    prompt_number: int
    prompt_message_id: str
    prompt_text: str
    seq_start: int = Field(description="seq of the prompt's message in its session.")
    seq_end: int = Field(description="seq of the next prompt's message, or n_messages + 1.")
    source_kind: str
    source_file: str
    cwd: str | None
    subagent_session_ids: list[str] = Field(
        description="Subagent sessions spawned by a tool call of this task."
    )


class ScoreRow(_Row):
    task_id: str
    session_id: str
    prompt_number: int
    source_kind: str
    source_file: str
    category: str = Field(description="accepted, partially_accepted, rejected, needs_human_review")
    rule: str = Field(description="The rule of docs/SCORING.md that decided the category.")
    reasons: list[str] = Field(description="Every marker that fired, in rule order.")
    scorer_version: str
    n_tool_calls: int = Field(description="Calls of the task, its subagents included.")
    n_tool_errors: int = Field(description="Calls whose structural is_error is true.")
    unrecovered_error: bool = Field(description="The task's last call with a result failed.")
    final_text_answer: bool = Field(
        description="The last assistant message has text and no tool call."
    )
    interrupted: bool
    loop: bool = Field(description="N or more identical consecutive calls (canonical args).")
    empty_args_calls: int = Field(description="Calls with `{}` or a required argument missing.")
    in_args_repetition: bool = Field(description="An argument value repeats a line > N times.")
    user_correction: bool = Field(description="The next prompt pushes back, or an interrupt.")
    tests_passed: int | None = Field(description="Passed count of the task's last test run.")
    tests_failed: int | None = Field(description="Failed count of the task's last test run.")
    outcome: str | None = Field(description="pass, fail or partial from --source outcomes.")
    outcome_note: str | None


class ConversationRow(_Row):
    """A task as an OpenAI/TRL conversation, built once by score for every export."""

    task_id: str
    session_id: str
    prompt_number: int
    source_kind: str
    prompt: str = Field(description="JSON: the prompt messages (one user message).")
    completion: str = Field(
        description="JSON: the agent's messages after the prompt (active branch, thinking kept)."
    )
    tool_names: list[str] = Field(description="Distinct tools called, in first-use order.")
    n_messages: int
    n_tool_calls: int
    n_assistant_turns: int
    has_thinking: bool
    copied_context: bool = Field(description="Compaction summary or copied history inside.")
    truncated_args: bool = Field(description="A call's input was truncated by collect.")
    final_answer: str = Field(description="The last assistant message's text when it has no call.")
    max_arg_chars: int = Field(description="Longest string argument value over the calls.")
    max_repeated_line: int = Field(description="Most repeats of one line inside an argument value.")
    empty_args_tool: str | None = Field(description="First call missing a required argument.")
    cap_category: str = Field(description="Dominant tool (or Bash command) category.")
    steps: str = Field(description="JSON list of {tool, args} (key arguments) for every call.")
    files_touched: list[str]
    secret_kinds: list[str] = Field(description="Secret kinds found in the conversation's strings.")
    template_token: str | None = Field(description="First chat-template token found, if any.")
    json_digests: list[str] = Field(
        description="xxh3-128 of the prompt, completion and prompt + completion JSON (firewall lookups)."
    )
    text_digest: str = Field(description="xxh3-128 of the normalised text (exact duplicates).")
    minhash: list[int] = Field(description="One-permutation MinHash signature (near duplicates).")


class SftRow(_Row):
    row_id: str = Field(description="H(task_id, 'sft'): one row per task.")
    task_id: str
    session_id: str
    source_kind: str
    category: str
    scorer_version: str
    split: str = Field(description="train or valid, by hash of session_id.")
    cap_category: str = Field(description="Dominant tool (or Bash command) used by the cap.")
    messages: str = Field(description="JSON: OpenAI/TRL messages.")
    tools: str = Field(description="JSON: the JSON Schemas of the tools the row uses.")
    n_messages: int
    n_tool_calls: int
    has_thinking: bool


class RagRow(_Row):
    doc_id: str = Field(description="H(task_id, 'rag').")
    task_id: str
    session_id: str
    source_file: str
    source_kind: str
    category: str
    scorer_version: str
    cwd: str | None
    prompt: str
    steps: str = Field(description="JSON list of {tool, args} with the key arguments only.")
    files_touched: list[str]
    final_answer: str
    text: str = Field(description="The playbook rendered as one markdown document.")


class PreferenceRow(_Row):
    pair_id: str = Field(description="H(chosen_task_id, rejected_task_id).")
    prompt: str = Field(description="JSON: the shared prompt messages.")
    chosen: str = Field(description="JSON: the chosen completion messages.")
    rejected: str = Field(description="JSON: the rejected completion messages.")
    tools: str = Field(description="JSON: schemas of the tools either side uses.")
    chosen_task_id: str
    rejected_task_id: str
    chosen_category: str
    rejected_category: str
    pair_source: str = Field(description="branch_sibling or same_prompt")
    scorer_version: str


class KtoRow(_Row):
    row_id: str = Field(description="H(task_id, 'kto').")
    task_id: str
    session_id: str
    category: str
    label: bool = Field(description="True for accepted, False for rejected.")
    prompt: str = Field(description="JSON: prompt messages.")
    completion: str = Field(description="JSON: completion messages.")
    tools: str
    scorer_version: str


class CollatedSftRow(_Row):
    """One SFT example as token ids through the model's chat template, its loss mask proven."""

    task_id: str
    session_id: str
    split: str
    input_ids: list[int]
    attention_mask: list[int]
    labels: list[int] = Field(description="The id where trained, -100 where not.")
    n_tokens: int
    n_trained: int
    assistant_turns: int = Field(description="Assistant turns kept (after truncation).")
    dropped_turns: int = Field(description="Assistant turns cut to fit max_length.")
    template: str = Field(description="The chat template rendered through (a TRL file name, or 'model').")


class CollatedPreferenceRow(_Row):
    """A preference pair as ids: the shared prompt through the generation prompt, each
    completion with the mask of its own assistant turns."""

    pair_id: str
    prompt_input_ids: list[int]
    chosen_input_ids: list[int]
    chosen_mask: list[int]
    rejected_input_ids: list[int]
    rejected_mask: list[int]
    template: str


class CollatedSdpoRow(_Row):
    """One tool-error site as a hint-distillation pair: the student's trace up to its
    recovery, the teacher's with a hint, the recovery ids aligned position for position."""

    task_id: str
    session_id: str
    split: str = Field(description="The SFT row's split: train or valid, by session.")
    failing_index: int = Field(description="Index of the failing tool result in the conversation.")
    error_kind: str
    hint: str
    student_input_ids: list[int]
    teacher_input_ids: list[int] = Field(description="Teacher prompt (hint, generation prompt) + the recovery ids.")
    sdpo_loss_mask: list[int] = Field(description="1 on the student's recovery tokens.")
    student_response_idx: list[int]
    teacher_response_idx: list[int]
    template: str


class TrainStepRow(_Row):
    """One optimizer step of a LoRA run (its timing lives in the step log, not here)."""

    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int = Field(description="Tokens the step read (its packs, and its SDPO row and pair, if any).")
    sft_loss: float | None = Field(None, description="Masked cross-entropy (per trained token).")
    sdpo_loss: float | None = Field(None, description="SDPO divergence, unweighted; null when SDPO is off.")
    dpo_loss: float | None = Field(None, description="DPO loss, unweighted; null when DPO is off.")


class TrainRowRow(_Row):
    """An example a LoRA run trained on (its packs were reached before max_steps)."""

    objective: str = Field("sft", description="sft, sdpo (a hint-distillation row) or dpo (a side of a pair).")
    task_id: str
    session_id: str
    times_seen: int = Field(description="Micro-steps whose pack held it (packs are cycled).")


class EvalMetricRow(_Row):
    """One measure of the eval, the base model beside the adapter (``pipeline.eval.scorecard``)."""

    metric: str
    source: str = Field(description="points (replayed steps), rollout (free runs) or all (every generation).")
    base: float | None = Field(description="The base model's rate; null when there was nothing to count.")
    adapter: float | None = Field(description="The adapter's rate; null without an adapter or nothing to count.")
    delta: float | None = Field(description="adapter - base.")
    base_n: int = Field(description="What the base model's rate counts over.")
    adapter_n: int | None
    higher_is_better: bool
    gate: str | None = Field(description="The gate on this measure, when there is one.")
    passed: bool | None = Field(description="The gate's verdict; null when not judged (no gate, or a rate missing).")


class EvalGenerationRow(_Row):
    """One generation of the eval: what a model said at a replayed step or a rollout step."""

    task_id: str
    session_id: str
    model: str = Field(description="base or adapter.")
    mode: str = Field(description="point (continuing the recorded history) or rollout (running on its own).")
    position: int = Field(description="point: the recorded assistant message's index; rollout: the step.")
    recorded_called: bool | None = Field(description="point: whether the recorded agent called a tool there.")
    text: str
    calls: int = Field(description="Tool calls that parse.")
    parse_failures: int
    answered_in_text: bool
    text_after_call: bool


class ToolSchemaRow(_Row):
    name: str
    source_kind: str
    n_calls: int = Field(description="Observed calls the schema was derived from.")
    required: list[str]
    tool_schema: str = Field(description="JSON: an OpenAI function tool schema.")


SCORING_TABLES = {
    "tasks": TableSpec("tasks", TaskRow, ("session_id", "prompt_number", "task_id")),
    "scores": TableSpec("scores", ScoreRow, ("session_id", "prompt_number", "task_id")),
    "conversations": TableSpec("conversations", ConversationRow, ("session_id", "prompt_number", "task_id")),
    "tool_specs": TableSpec("tool_specs", ToolSchemaRow, ("source_kind", "name")),
}
SFT = TableSpec("sft", SftRow, ("split", "session_id", "task_id"), dataset=True)
TOOL_SCHEMAS = TableSpec("tool_schemas", ToolSchemaRow, ("source_kind", "name"))
RAG = TableSpec("rag", RagRow, ("session_id", "task_id"), dataset=True)
PREFERENCE = TableSpec("preference", PreferenceRow, ("chosen_task_id", "rejected_task_id"), dataset=True)
KTO = TableSpec("kto", KtoRow, ("session_id", "task_id"))
COLLATED_SFT = TableSpec("collated_sft", CollatedSftRow, ("split", "session_id", "task_id"), dataset=True)
COLLATED_PREFERENCE = TableSpec("collated_preference", CollatedPreferenceRow, ("pair_id",), dataset=True)
TRAIN_STEPS = TableSpec("train_steps", TrainStepRow, ("step",))
TRAIN_ROWS = TableSpec("train_rows", TrainRowRow, ("objective", "session_id", "task_id"))
EVAL = TableSpec("eval", EvalMetricRow, ("metric",))
EVAL_GENERATIONS = TableSpec("eval_generations", EvalGenerationRow, ("task_id", "model", "mode", "position"))
COLLATED_SDPO = TableSpec("collated_sdpo", CollatedSdpoRow, ("split", "session_id", "task_id", "failing_index"),
                          dataset=True)
# The tables a run summary lists as datasets (read where no stage list is at hand:
# receipts verify, drift): those whose spec says so.
DATASET_TABLES: tuple[str, ...] = tuple(
    s.name for s in (SFT, TOOL_SCHEMAS, RAG, PREFERENCE, KTO, COLLATED_SFT, COLLATED_PREFERENCE, COLLATED_SDPO)
    if s.dataset
)
