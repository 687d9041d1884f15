"""The demo's SQL: a scratch database, and a realistic backlog of LiteLLM response objects.

Only ``runbook.tools`` (the demo, the tests, the benchmark) runs these; the runbook never
creates or drops a user's database. Every function returns a ``psycopg.sql.Composed`` (or
``SQL``) with identifiers through ``sql.Identifier`` and values as named placeholders or,
where a statement is data (the demo's status mix), ``sql.Literal``; nothing is executed here.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

__all__ = ["DEMO_TABLE", "database_exists", "drop_database", "create_database", "set_seed", "insert_rows",
           "analyze_table", "quiet_messages", "SPEND_LOGS", "TOOL_INDEX", "HEALTH_CHECKS", "AUDIT_LOG", "ERROR_LOGS",
           "tools_of", "insert_spend_logs", "insert_health_checks", "insert_audit_log",
           "insert_error_logs", "analyze_tables"]  # fmt: skip

# LiteLLM's table of managed objects, where its migrations create it.
DEMO_TABLE = sql.Identifier("public", "LiteLLM_ManagedObjectTable")


def database_exists() -> sql.SQL:
    """One row (the column 1) when database %(name)s exists, none otherwise."""
    return sql.SQL("SELECT 1 FROM pg_database WHERE datname = %(name)s")


def drop_database(name: str) -> sql.Composed:
    """Drop database ``name`` if present, ending its sessions. No placeholders."""
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))


def create_database(name: str) -> sql.Composed:
    """Create database ``name``. No placeholders."""
    return sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))


def set_seed() -> sql.SQL:
    """Seed this session's ``random()`` with %(seed)s (-1.0 to 1.0): the same rows every time."""
    return sql.SQL("SELECT setseed(%(seed)s)")


def _status_case(weights: Sequence[tuple[str | None, float]]) -> sql.Composed:
    parts = [
        sql.SQL("WHEN r < {} THEN {}").format(sql.Literal(bound), sql.Literal(status))
        for status, bound in weights
    ]
    return sql.SQL("CASE ") + sql.SQL(" ").join(parts) + sql.SQL(" END")


def insert_rows(weights: Sequence[tuple[str | None, float]]) -> sql.Composed:
    """Insert %(rows)s managed objects into ``DEMO_TABLE``: uuid ids, 1-2 KB ``file_object``
    documents, three purposes, created over the last 60 days, and a status drawn by
    ``weights`` ((status, cumulative upper bound of random()), in order)."""
    return sql.SQL(
        """
        INSERT INTO {table}
            (id, unified_object_id, model_object_id, file_object, file_purpose, created_at,
             created_by, updated_at, updated_by, status, team_id)
        SELECT gen_random_uuid()::text,
               'litellm_proxy;model_id:gpt-4o;llm_output_id:resp_' || md5(g::text),
               'resp_' || md5(g::text || 'm'),
               jsonb_build_object(
                   'id', 'resp_' || md5(g::text || 'm'), 'object', 'response', 'model', 'gpt-4o-2024-08-06',
                   'background', true, 'created_at', extract(epoch FROM created)::bigint,
                   'output', jsonb_build_array(jsonb_build_object('type', 'message', 'role', 'assistant',
                       'content', jsonb_build_array(jsonb_build_object('type', 'output_text',
                           'text', repeat('The quick brown fox jumps over the lazy dog. ', 20 + (r2 * 20)::int))))),
                   'usage', jsonb_build_object('input_tokens', (r2 * 4000)::int, 'output_tokens', (r * 900)::int)),
               purpose, created, 'default_user_id', created + (r2 * interval '2 hours'), 'default_user_id',
               {status}, 'team-' || (g %% 5)
        FROM (
            SELECT g, random() AS r, random() AS r2,
                   CASE WHEN random() < 0.75 THEN 'response' WHEN random() < 0.7 THEN 'batch' ELSE 'fine-tune' END
                       AS purpose,
                   date_trunc('milliseconds', (now() AT TIME ZONE 'UTC') - random() * interval '60 days') AS created
            FROM generate_series(1, %(rows)s) AS g
        ) AS s
        """
    ).format(table=DEMO_TABLE, status=_status_case(weights))


def analyze_table() -> sql.Composed:
    """Refresh the planner's statistics of ``DEMO_TABLE``. No placeholders."""
    return sql.SQL("ANALYZE {}").format(DEMO_TABLE)


def quiet_messages() -> sql.SQL:
    """Show errors only (``client_min_messages``): the first line of the psql script that
    applies LiteLLM's migrations. No placeholders."""
    return sql.SQL("SET client_min_messages = error")


# LiteLLM's other growing tables, which the retention targets clean up: the demo fills them too.
SPEND_LOGS = "LiteLLM_SpendLogs"
TOOL_INDEX = "LiteLLM_SpendLogToolIndex"
HEALTH_CHECKS = "LiteLLM_HealthCheckTable"
AUDIT_LOG = "LiteLLM_AuditLog"
ERROR_LOGS = "LiteLLM_ErrorLogs"

# The demo's vocabulary. No per-cent sign in any of it: these values become SQL text, run with
# named placeholders.
# Deployments: (model, model group, provider, api_base, $ per input token, $ per output token).
_MODELS = (
    ("gpt-4o-2024-08-06", "gpt-4o", "openai", "https://api.openai.com/v1/", 2.5e-06, 1.0e-05),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini", "openai", "https://api.openai.com/v1/", 1.5e-07, 6.0e-07),
    ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet", "anthropic", "https://api.anthropic.com/v1/messages",
     3.0e-06, 1.5e-05),
    ("gemini-1.5-pro-002", "gemini-1.5-pro", "vertex_ai", "https://us-central1-aiplatform.googleapis.com/v1/",
     1.25e-06, 5.0e-06),
    ("azure/gpt-4o-westeurope", "gpt-4o", "azure", "https://contoso-westeurope.openai.azure.com/", 2.5e-06, 1.0e-05),
)  # fmt: skip
_TOOLS = ("web_search", "get_weather", "lookup_order", "search_knowledge_base", "run_sql_query", "send_email",
          "get_stock_price", "calculator")  # fmt: skip
_SYSTEM_PROMPTS = (
    "You are a helpful assistant for Contoso's customer support team. Answer concisely and cite the relevant policy.",
    "You are a senior software engineer. Review the code the user sends and point out bugs, risks and simpler designs.",
    "You are a travel planning assistant. Use the tools to check the weather and suggest an itinerary.",
    "Summarise the document the user provides in five bullet points, then list any open questions.",
)
# Sentences the prompts and answers are made of.
_PROMPT_SENTENCES = (
    "Here is the ticket the customer opened yesterday about the delayed shipment.",
    "The order was placed on the web shop and paid with a credit card.",
    "Please draft a reply that apologises and explains the next steps.",
    "Can you check whether the refund policy applies to orders older than thirty days?",
    "I pasted the function below; it sometimes returns stale results under load.",
    "def fetch(key): return cache.get(key) or db.query(key) if key else None",
    "The service runs behind a load balancer with three replicas and a shared Redis cache.",
    "What would a safer retry strategy look like for the payment provider's API?",
    "Plan a three day trip to Lisbon in early spring for two adults on a moderate budget.",
    "We would like to visit museums, eat local food and take one day trip outside the city.",
    "Summarise the attached quarterly report for the leadership meeting on Monday.",
    "Revenue grew eleven percent quarter over quarter while support costs stayed flat.",
    "The churn rate in the enterprise segment rose slightly after the pricing change.",
    "List the risks you see and the questions we should ask the finance team.",
    "Translate the following paragraph into German and keep the formal tone.",
    "Our users report that the export button times out for workspaces with many projects.",
)
_ANSWER_SENTENCES = (
    "Thanks for the details, here is a suggested reply to the customer.",
    "I am sorry that your order arrived later than promised, and I understand how frustrating that is.",
    "According to the policy, refunds are available within thirty days of delivery, not of purchase.",
    "The function mixes caching and lookup in one expression, which hides a subtle precedence bug.",
    "A cache miss and an empty value are treated the same way, so the database is queried too often.",
    "Use exponential backoff with jitter and cap the number of attempts at five.",
    "Make the payment request idempotent with a client generated key, so a retry never charges twice.",
    "Day one: walk through Alfama, visit the castle at sunset and have dinner in a small tasca.",
    "Day two: spend the morning at the Gulbenkian museum and the afternoon in Belem.",
    "Day three: take the train to Sintra early to avoid the crowds at Pena Palace.",
    "Revenue growth was driven mostly by the mid-market segment and the new annual plans.",
    "Support costs stayed flat because the self-service portal deflected a third of the tickets.",
    "The main risk is the rising churn among enterprise customers after the price increase.",
    "I would ask finance how the discounts granted at renewal affect the reported margin.",
    "The export times out because it builds the whole archive in memory before streaming it.",
    "Streaming the archive in chunks and paginating the project query would fix the timeout.",
)
# Failures: (exception type, status code, message).
_ERRORS = (
    ("RateLimitError", "429", "litellm.RateLimitError: RateLimitError: OpenAIException - Rate limit reached for "
     "gpt-4o in organization org-demo on tokens per min (TPM): Limit 30000, Used 29841, Requested 1952. "
     "Please try again in 3.586s."),
    ("Timeout", "408", "litellm.Timeout: APITimeoutError - Request timed out. Error_str: Request timed out. "
     "timeout value=600.0, time taken=600.04 seconds"),
    ("APIConnectionError", "500", "litellm.APIConnectionError: APIConnectionError: OpenAIException - "
     "Connection error."),
    ("BadRequestError", "400", "litellm.BadRequestError: OpenAIException - This model's maximum context length "
     "is 128000 tokens. However, your messages resulted in 131822 tokens. Please reduce the length of the messages."),
    ("InternalServerError", "529", "litellm.InternalServerError: AnthropicException - Overloaded. Handle with "
     "litellm.InternalServerError."),
    ("AuthenticationError", "401", "litellm.AuthenticationError: AuthenticationError: OpenAIException - "
     "Incorrect API key provided: sk-proj-****************WxQA."),
)  # fmt: skip
_AUDITED = ("LiteLLM_VerificationToken", "LiteLLM_TeamTable", "LiteLLM_UserTable", "LiteLLM_ProxyModelTable")
_REQUEST_TAGS = ('[]', '["prod"]', '["prod", "chat"]', '["batch-eval"]', '["staging"]')


def _table(name: str) -> sql.Identifier:
    return sql.Identifier("public", name)


def _array(values: Sequence[object], kind: str) -> sql.Composed:
    """A constant array of ``values``, parenthesised so it can be subscripted: ``(...)[i]``."""
    return sql.SQL("({}::{})").format(sql.Literal(list(values)), sql.SQL(kind))


def _pick(values: Sequence[object], kind: str, index: sql.Composable) -> sql.Composed:
    """``values[index]`` (1-based) in SQL."""
    return sql.SQL("{}[{}]").format(_array(values, kind), index)


def _ago(days: int) -> sql.Composed:
    """A UTC wall-clock time up to ``days`` days ago, in milliseconds (as LiteLLM's timestamp(3)).

    Counted back from now truncated to the millisecond, so that with the same seed every time
    lies at the same distance from the moment of loading."""
    return sql.SQL(
        "date_trunc('milliseconds', date_trunc('milliseconds', now() AT TIME ZONE 'UTC') "
        "- random() * make_interval(days => {}))"
    ).format(sql.Literal(days))


def _uuid() -> sql.SQL:
    """A uuid string from the seeded ``random()`` (``gen_random_uuid()`` ignores the seed)."""
    return sql.SQL("md5(random()::text)::uuid::text")


def _text(sentences: Sequence[str], count: sql.Composable) -> sql.Composed:
    """``count`` sentences drawn at random from ``sentences``, joined by spaces (a subquery:
    evaluated once per row)."""
    return sql.SQL("(SELECT string_agg({pick}, ' ') FROM generate_series(1, {count}))").format(
        pick=_pick(sentences, "text[]", sql.SQL("1 + floor(random() * {})::int").format(sql.Literal(len(sentences)))),
        count=count,
    )


def _hash_byte(value: sql.Composable, byte: int) -> sql.Composed:
    return sql.SQL("get_byte(decode(md5({}), 'hex'), {})").format(value, sql.Literal(byte))


def tools_of(request_id: sql.Composable) -> sql.Composed:
    """The tools (text[]) a demo request with id ``request_id`` called, from a hash of the id:
    none for about 70 % of them, one, or for a quarter of the rest two different ones."""
    n = len(_TOOLS)
    first = sql.SQL("mod({}, {})").format(_hash_byte(request_id, 2), sql.Literal(n))
    second = sql.SQL("mod({} + 1 + mod({}, {}), {})").format(
        first, _hash_byte(request_id, 3), sql.Literal(n - 1), sql.Literal(n)
    )
    one = _pick(_TOOLS, "text[]", sql.SQL("1 + {}").format(first))
    other = _pick(_TOOLS, "text[]", sql.SQL("1 + {}").format(second))
    return sql.SQL(
        "CASE WHEN {b0} >= 77 THEN ARRAY[]::text[] WHEN {b1} < 64 THEN ARRAY[{one}, {other}] ELSE ARRAY[{one}] END"
    ).format(b0=_hash_byte(request_id, 0), b1=_hash_byte(request_id, 1), one=one, other=other)


def _model(column: int, index: sql.Composable) -> sql.Composed:
    kind = "float8[]" if column >= 4 else "text[]"
    return _pick([m[column] for m in _MODELS], kind, index)


def _model_id(model: sql.Composable) -> sql.Composed:
    """A deployment's id as LiteLLM makes it, a sha256 hex (here of the model name alone)."""
    return sql.SQL("encode(sha256(convert_to({}, 'UTF8')), 'hex')").format(model)


def _api_key(number: sql.Composable) -> sql.Composed:
    """The hash LiteLLM stores for virtual key number ``number`` (never the key itself)."""
    return sql.SQL("encode(sha256(convert_to('sk-demo-' || {}, 'UTF8')), 'hex')").format(number)


def insert_spend_logs() -> sql.Composed:
    """Insert %(rows)s spend logs into ``"LiteLLM_SpendLogs"`` and their tools into
    ``"LiteLLM_SpendLogToolIndex"``; one row back: (spend logs, tool rows) inserted.

    Chat completions (85 %) and responses calls to five deployments, "startTime" over the last
    60 days, token counts and spend that follow from the prompt's and the answer's length, 3 %
    failures (empty response, the error in metadata), 6 % cache hits. ``messages``,
    ``response`` and ``proxy_server_request`` hold 0.5-4 KB of JSON each, except for about
    20 % of the rows where they are already ``'{}'`` (payload storage off) and 0.2 % with SQL
    NULL ``messages``. About 30 % of the requests called one tool, a quarter of those two
    (``tools_of``): one tool index row each, at the request's "startTime".
    """
    tools_json = sql.SQL(
        "(SELECT jsonb_agg(jsonb_build_object('type', 'function', 'function', jsonb_build_object('name', tool, "
        "'description', 'Call ' || tool || ' with a query.', 'parameters', {schema}::jsonb))) "
        "FROM unnest(u.tools) AS tool)"
    ).format(
        schema=sql.Literal('{"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}')
    )
    tool_calls = sql.SQL(
        "(SELECT jsonb_agg(jsonb_build_object('id', 'call_' || left(md5(u.request_id || tool), 24), "
        "'type', 'function', 'function', jsonb_build_object('name', tool, "
        "'arguments', jsonb_build_object('query', left(u.prompt_text, 60))::text))) "
        "FROM unnest(u.tools) AS tool)"
    )
    messages = sql.SQL(
        "jsonb_build_array(jsonb_build_object('role', 'system', 'content', u.system_prompt), "
        "jsonb_build_object('role', 'user', 'content', u.prompt_text))"
    )
    usage = sql.SQL(
        "jsonb_build_object('prompt_tokens', u.prompt_tokens, 'completion_tokens', u.completion_tokens, "
        "'total_tokens', u.prompt_tokens + u.completion_tokens)"
    )
    return sql.SQL(
        """
        WITH spend AS (
            INSERT INTO {spend_logs}
                (request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens,
                 "startTime", "endTime", "completionStartTime", model, model_id, model_group, custom_llm_provider,
                 api_base, "user", metadata, cache_hit, cache_key, request_tags, team_id, end_user,
                 requester_ip_address, messages, response, proxy_server_request, session_id, status,
                 organization_id, request_duration_ms, created_at, updated_at, litellm_call_id)
            SELECT u.request_id, u.call_type, u.api_key,
                   CASE WHEN u.cached OR u.failed THEN 0
                        ELSE u.prompt_tokens * u.input_price + u.completion_tokens * u.output_price END,
                   u.prompt_tokens + u.completion_tokens, u.prompt_tokens, u.completion_tokens,
                   u.started, u.started + u.duration_ms * interval '1 millisecond',
                   CASE WHEN u.stream AND NOT u.failed
                        THEN u.started + round(u.duration_ms * u.ttft_share) * interval '1 millisecond' END,
                   u.model, u.model_id, u.model_group, u.provider, u.api_base, u.user_id,
                   jsonb_build_object(
                       'user_api_key', u.api_key, 'user_api_key_alias', 'key-' || u.key_no,
                       'user_api_key_team_id', u.team_id, 'user_api_key_team_alias', 'Team ' || u.team_no,
                       'user_api_key_org_id', u.org_id, 'user_api_key_user_id', u.user_id,
                       'user_api_key_end_user_id', u.end_user, 'requester_ip_address', u.ip,
                       'spend_logs_metadata', NULL, 'applied_guardrails', '[]'::jsonb, 'status', u.status,
                       'attempted_retries', 0, 'max_retries', 2, 'litellm_overhead_time_ms', u.overhead_ms,
                       'cold_storage_object_key', NULL, 'mcp_tool_call_metadata', NULL,
                       'usage_object', {usage},
                       'error_information', CASE WHEN u.failed THEN jsonb_build_object(
                           'error_class', u.error_type, 'error_code', u.error_code, 'error_message', u.error_message,
                           'llm_provider', u.provider) END),
                   CASE WHEN u.cached THEN 'True' ELSE 'False' END,
                   CASE WHEN u.cached THEN md5(u.prompt_text) ELSE 'Cache OFF' END,
                   u.request_tags, u.team_id, u.end_user, u.ip,
                   CASE WHEN u.empty THEN '{{}}'::jsonb WHEN u.null_messages THEN NULL ELSE {messages} END,
                   CASE WHEN u.empty OR u.failed THEN '{{}}'::jsonb ELSE jsonb_build_object(
                       'id', u.request_id,
                       'object', CASE WHEN u.call_type = 'aresponses' THEN 'response' ELSE 'chat.completion' END,
                       'model', u.model, 'system_fingerprint', 'fp_' || left(md5(u.model), 10),
                       'choices', jsonb_build_array(jsonb_build_object(
                           'index', 0,
                           'finish_reason', CASE WHEN cardinality(u.tools) > 0 THEN 'tool_calls' ELSE 'stop' END,
                           'message', jsonb_build_object('role', 'assistant', 'content', u.answer_text,
                                                         'tool_calls', {tool_calls}))),
                       'usage', {usage}) END,
                   CASE WHEN u.empty THEN '{{}}'::jsonb ELSE jsonb_build_object(
                       'model', u.model_group, 'messages', {messages}, 'temperature', u.temperature,
                       'stream', u.stream, 'user', u.end_user, 'tools', {tools_json},
                       'metadata', jsonb_build_object('tags', u.request_tags)) END,
                   u.session_id, u.status, u.org_id, u.duration_ms,
                   u.started + (u.duration_ms + u.overhead_ms) * interval '1 millisecond',
                   u.started + (u.duration_ms + u.overhead_ms) * interval '1 millisecond',
                   u.call_id
            FROM (
                SELECT t.*,
                       {tools} AS tools,
                       (length(t.system_prompt) + length(t.prompt_text)) / 4 + 12 AS prompt_tokens,
                       CASE WHEN t.failed THEN 0 ELSE length(t.answer_text) / 4 + 2 END AS completion_tokens
                FROM (
                    SELECT p.*,
                           CASE WHEN p.responses_api THEN 'resp_' || p.id_hex
                                ELSE 'chatcmpl-' || p.id_hex::uuid END AS request_id,
                           CASE WHEN p.responses_api THEN 'aresponses' ELSE 'acompletion' END AS call_type,
                           {model} AS model, {model_group} AS model_group, {provider} AS provider,
                           {api_base} AS api_base, {input_price} AS input_price, {output_price} AS output_price,
                           {model_id} AS model_id, {api_key} AS api_key,
                           md5('team' || p.team_no)::uuid::text AS team_id, md5('org')::uuid::text AS org_id,
                           'user-' || p.user_no AS user_id,
                           CASE WHEN p.user_no < 30 THEN 'customer-' || (p.user_no * 37 + 1000) END AS end_user,
                           '10.0.' || p.ip3 || '.' || p.ip4 AS ip,
                           p.r_payload < 0.2 AS empty, p.r_payload >= 0.998 AS null_messages,
                           p.r_status < 0.03 AS failed, p.r_cache < 0.06 AS cached,
                           CASE WHEN p.r_status < 0.03 THEN 'failure' ELSE 'success' END AS status,
                           CASE WHEN p.r_session < 0.5 THEN md5('session' || p.session_no)::uuid::text END
                               AS session_id,
                           {request_tags} AS request_tags, {system_prompt} AS system_prompt,
                           {error_type} AS error_type, {error_code} AS error_code, {error_message} AS error_message,
                           {prompt_text} AS prompt_text, {answer_text} AS answer_text
                    FROM (
                        SELECT g,
                               random() < 0.15 AS responses_api, md5(random()::text) AS id_hex, {uuid} AS call_id,
                               1 + floor(power(random(), 1.5) * {models})::int AS m,
                               floor(random() * 8)::int AS key_no, floor(random() * 6)::int AS team_no,
                               floor(random() * 60)::int AS user_no,
                               1 + floor(random() * {systems})::int AS system_no,
                               {started} AS started,
                               (350 + power(random(), 2) * 24000)::int AS duration_ms,
                               0.1 + random() * 0.5 AS ttft_share,
                               (2 + random() * 40)::int AS overhead_ms,
                               4 + floor(random() * 40)::int AS prompt_n, 3 + floor(random() * 40)::int AS answer_n,
                               random() AS r_payload, random() AS r_status, random() AS r_cache,
                               random() < 0.4 AS stream,
                               (ARRAY[0, 0.2, 0.7, 1])[1 + floor(random() * 4)::int] AS temperature,
                               random() AS r_session, floor(random() * greatest(%(rows)s / 6, 1))::int AS session_no,
                               1 + floor(random() * {tag_kinds})::int AS tag_no,
                               1 + floor(random() * {error_kinds})::int AS error_no,
                               floor(random() * 4)::int AS ip3, floor(random() * 256)::int AS ip4
                        FROM generate_series(1, %(rows)s) AS g
                    ) AS p
                ) AS t
            ) AS u
            RETURNING request_id, "startTime"
        ),
        tools AS (
            INSERT INTO {tool_index} (request_id, tool_name, start_time)
            SELECT spend.request_id, tool, spend."startTime"
            FROM spend CROSS JOIN LATERAL unnest({spend_tools}) AS tool
            RETURNING request_id
        )
        SELECT (SELECT count(*) FROM spend) AS spend_logs, (SELECT count(*) FROM tools) AS tool_index
        """
    ).format(
        spend_logs=_table(SPEND_LOGS), tool_index=_table(TOOL_INDEX),
        usage=usage, messages=messages, tool_calls=tool_calls, tools_json=tools_json,
        tools=tools_of(sql.SQL("t.request_id")), spend_tools=tools_of(sql.SQL("spend.request_id")),
        model=_model(0, sql.SQL("p.m")), model_group=_model(1, sql.SQL("p.m")), provider=_model(2, sql.SQL("p.m")),
        api_base=_model(3, sql.SQL("p.m")), input_price=_model(4, sql.SQL("p.m")),
        output_price=_model(5, sql.SQL("p.m")), model_id=_model_id(_model(0, sql.SQL("p.m"))),
        api_key=_api_key(sql.SQL("p.key_no")),
        request_tags=_pick(_REQUEST_TAGS, "jsonb[]", sql.SQL("p.tag_no")),
        system_prompt=_pick(_SYSTEM_PROMPTS, "text[]", sql.SQL("p.system_no")),
        error_type=_pick([e[0] for e in _ERRORS], "text[]", sql.SQL("p.error_no")),
        error_code=_pick([e[1] for e in _ERRORS], "text[]", sql.SQL("p.error_no")),
        error_message=_pick([e[2] for e in _ERRORS], "text[]", sql.SQL("p.error_no")),
        prompt_text=_text(_PROMPT_SENTENCES, sql.SQL("p.prompt_n")),
        answer_text=_text(_ANSWER_SENTENCES, sql.SQL("p.answer_n")),
        uuid=_uuid(), started=_ago(60), models=sql.Literal(len(_MODELS)),
        systems=sql.Literal(len(_SYSTEM_PROMPTS)), tag_kinds=sql.Literal(len(_REQUEST_TAGS)),
        error_kinds=sql.Literal(len(_ERRORS)),
    )  # fmt: skip


def insert_health_checks() -> sql.Composed:
    """Insert %(rows)s health checks into ``"LiteLLM_HealthCheckTable"``: one deployment each,
    checked_at over the last 60 days, 7 % unhealthy (with the error and no response time),
    ``details`` a small JSON of the endpoint."""
    return sql.SQL(
        """
        INSERT INTO {health}
            (health_check_id, model_name, model_id, status, healthy_count, unhealthy_count, error_message,
             response_time_ms, details, checked_by, checked_at, created_at, updated_at)
        SELECT p.id, {model_group}, {model_id},
               CASE WHEN p.healthy THEN 'healthy' ELSE 'unhealthy' END,
               CASE WHEN p.healthy THEN 1 ELSE 0 END, CASE WHEN p.healthy THEN 0 ELSE 1 END,
               CASE WHEN NOT p.healthy THEN {error_message} END,
               CASE WHEN p.healthy THEN p.response_time_ms END,
               jsonb_build_object(
                   CASE WHEN p.healthy THEN 'healthy_endpoints' ELSE 'unhealthy_endpoints' END,
                   jsonb_build_array(jsonb_build_object('model', {model}, 'api_base', {api_base},
                                                        'custom_llm_provider', {provider})),
                   'health_check_type', 'chat', 'max_tokens', 1),
               p.checked_by, p.checked_at, p.checked_at, p.checked_at
        FROM (
            SELECT g, {uuid} AS id, 1 + floor(random() * {models})::int AS m, random() >= 0.07 AS healthy,
                   1 + floor(random() * {error_kinds})::int AS error_no,
                   round((180 + power(random(), 3) * 4000)::numeric, 3)::float8 AS response_time_ms,
                   CASE WHEN random() < 0.9 THEN 'health_check_job' ELSE 'default_user_id' END AS checked_by,
                   {checked_at} AS checked_at
            FROM generate_series(1, %(rows)s) AS g
        ) AS p
        """
    ).format(
        health=_table(HEALTH_CHECKS), model=_model(0, sql.SQL("p.m")), model_group=_model(1, sql.SQL("p.m")),
        provider=_model(2, sql.SQL("p.m")), api_base=_model(3, sql.SQL("p.m")),
        model_id=_model_id(_model(0, sql.SQL("p.m"))),
        error_message=_pick([e[2] for e in _ERRORS], "text[]", sql.SQL("p.error_no")),
        uuid=_uuid(), models=sql.Literal(len(_MODELS)), error_kinds=sql.Literal(len(_ERRORS)), checked_at=_ago(60),
    )  # fmt: skip


def insert_audit_log() -> sql.Composed:
    """Insert %(rows)s entries into ``"LiteLLM_AuditLog"``: keys, teams, users and models
    created (no before_value), updated (both) or deleted (no updated_values) by a few admins,
    updated_at over the last 120 days, each value a 0.3-1 KB object."""
    obj = sql.SQL(
        """jsonb_build_object(
               'object_id', p.object_id, 'alias', 'demo-' || p.object_no,
               'models',
               to_jsonb((ARRAY['gpt-4o', 'gpt-4o-mini', 'claude-3-5-sonnet', 'gemini-1.5-pro'])[1:{models_from}]),
               'max_budget', {budget}, 'budget_duration', '30d', 'tpm_limit', 100000, 'rpm_limit', {rpm},
               'spend', p.spend, 'blocked', false,
               'team_id', md5('team' || p.team_no)::uuid::text, 'created_by', p.changed_by,
               'metadata', jsonb_build_object('owner', 'user-' || p.object_no,
                                              'cost_center', 'cc-' || (p.team_no + 100), 'notes', {notes}))"""
    )
    before = obj.format(models_from=sql.SQL("p.before_models"), budget=sql.SQL("p.before_budget"),
                        rpm=sql.SQL("p.before_rpm"), notes=sql.SQL("p.notes"))
    after = obj.format(models_from=sql.SQL("p.after_models"), budget=sql.SQL("p.after_budget"),
                       rpm=sql.SQL("p.after_rpm"), notes=sql.SQL("p.notes"))
    return sql.SQL(
        """
        INSERT INTO {audit}
            (id, updated_at, changed_by, changed_by_api_key, action, table_name, object_id, before_value,
             updated_values)
        SELECT p.id, p.updated_at, p.changed_by, {api_key}, p.action, p.table_name, p.object_id,
               CASE WHEN p.action = 'created' THEN NULL ELSE {before} END,
               CASE WHEN p.action = 'deleted' THEN NULL ELSE {after} END
        FROM (
            SELECT s.*,
                   CASE WHEN s.table_name = 'LiteLLM_VerificationToken'
                        THEN encode(sha256(convert_to('sk-object-' || s.object_no, 'UTF8')), 'hex')
                        ELSE md5(s.table_name || s.object_no)::uuid::text END AS object_id,
                   {notes} AS notes
            FROM (
                SELECT g, {uuid} AS id, {updated_at} AS updated_at,
                       'admin-' || floor(random() * 4)::int AS changed_by, floor(random() * 8)::int AS key_no,
                       {table_name} AS table_name, floor(random() * 400)::int AS object_no,
                       CASE WHEN random() < 0.4 THEN 'created' WHEN random() < 0.85 THEN 'updated' ELSE 'deleted' END
                           AS action,
                       floor(random() * 6)::int AS team_no,
                       1 + floor(random() * 4)::int AS before_models, 1 + floor(random() * 4)::int AS after_models,
                       (50 + floor(random() * 20) * 50)::int AS before_budget,
                       (50 + floor(random() * 20) * 50)::int AS after_budget,
                       (60 + floor(random() * 10) * 60)::int AS before_rpm,
                       (60 + floor(random() * 10) * 60)::int AS after_rpm,
                       floor(random() * 6)::int AS notes_n, round((random() * 400)::numeric, 4) AS spend
                FROM generate_series(1, %(rows)s) AS g
            ) AS s
        ) AS p
        """
    ).format(
        audit=_table(AUDIT_LOG), api_key=_api_key(sql.SQL("p.key_no")), before=before, after=after, uuid=_uuid(),
        updated_at=_ago(120),
        table_name=_pick(
            _AUDITED, "text[]", sql.SQL("1 + floor(random() * {})::int").format(sql.Literal(len(_AUDITED)))
        ),
        notes=_text(_PROMPT_SENTENCES, sql.SQL("s.notes_n")),
    )  # fmt: skip


def insert_error_logs() -> sql.Composed:
    """Insert %(rows)s failed requests into ``"LiteLLM_ErrorLogs"``: "startTime" over the last
    120 days, one of six exceptions (rate limits most often), ``request_kwargs`` the call's
    model, messages and parameters (0.5-3 KB)."""
    return sql.SQL(
        """
        INSERT INTO {errors}
            (request_id, "startTime", "endTime", api_base, model_group, litellm_model_name, model_id,
             request_kwargs, exception_type, exception_string, status_code)
        SELECT p.request_id, p.started, p.started + p.duration_ms * interval '1 millisecond',
               {api_base}, {model_group}, {model}, {model_id},
               jsonb_build_object(
                   'model', {model_group},
                   'messages', jsonb_build_array(jsonb_build_object('role', 'user', 'content', p.prompt_text)),
                   'optional_params', jsonb_build_object('temperature', 0.7, 'max_tokens', p.max_tokens,
                                                         'stream', p.stream),
                   'litellm_params', jsonb_build_object('api_base', {api_base}, 'custom_llm_provider', {provider},
                                                        'litellm_call_id', p.request_id, 'num_retries', 2,
                                                        'metadata', jsonb_build_object(
                                                            'user_api_key', {api_key},
                                                            'user_api_key_team_id',
                                                            md5('team' || p.team_no)::uuid::text))),
               {error_type}, {error_message}, {error_code}
        FROM (
            SELECT q.*, {prompt_text} AS prompt_text
            FROM (
                SELECT g, {uuid} AS request_id, {started} AS started,
                       (20 + power(random(), 3) * 600000)::int AS duration_ms,
                       1 + floor(random() * {models})::int AS m, floor(random() * 8)::int AS key_no,
                       floor(random() * 6)::int AS team_no,
                       (ARRAY[256, 1024, 4096])[1 + floor(random() * 3)::int] AS max_tokens, random() < 0.4 AS stream,
                       CASE WHEN random() < 0.45 THEN 1 ELSE 2 + floor(random() * {more_errors})::int END AS error_no,
                       5 + floor(random() * 30)::int AS prompt_n
                FROM generate_series(1, %(rows)s) AS g
            ) AS q
        ) AS p
        """
    ).format(
        errors=_table(ERROR_LOGS), model=_model(0, sql.SQL("p.m")), model_group=_model(1, sql.SQL("p.m")),
        provider=_model(2, sql.SQL("p.m")), api_base=_model(3, sql.SQL("p.m")),
        model_id=_model_id(_model(0, sql.SQL("p.m"))), api_key=_api_key(sql.SQL("p.key_no")),
        error_type=_pick([e[0] for e in _ERRORS], "text[]", sql.SQL("p.error_no")),
        error_code=_pick([e[1] for e in _ERRORS], "text[]", sql.SQL("p.error_no")),
        error_message=_pick([e[2] for e in _ERRORS], "text[]", sql.SQL("p.error_no")),
        uuid=_uuid(), started=_ago(120), models=sql.Literal(len(_MODELS)), more_errors=sql.Literal(len(_ERRORS) - 1),
        prompt_text=_text(_PROMPT_SENTENCES, sql.SQL("q.prompt_n")),
    )  # fmt: skip


def analyze_tables(names: Sequence[str]) -> sql.Composed:
    """Refresh the planner's statistics of the tables ``names`` (in schema public). No placeholders."""
    return sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(_table(n) for n in names))
