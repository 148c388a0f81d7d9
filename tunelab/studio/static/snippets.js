// "View code": one playground side's request (its model, its whole conversation, its parameters)
// as Python SDK, openai-client and curl code. Strings are written with JSON.stringify, whose output
// is also a valid Python string literal.
//
// p: {server, model, isTuned, baseModel, messages: [{role, content}] (the system turn first, if
//     any, and the user turn to answer last), temperature, topP, topK, maxTokens}

const q = (s) => JSON.stringify(s);

export function pythonSdk(p) {
  const params = [`temperature=${p.temperature}`, `max_output_tokens=${p.maxTokens}`, `top_p=${p.topP}`, `top_k=${p.topK}`];
  const system = p.messages.find((m) => m.role === "system");
  const turns = p.messages.filter((m) => m.role !== "system");
  const last = turns[turns.length - 1];
  const history = turns.slice(0, -1);
  // One prompt and nothing else is a plain prediction; a system turn or earlier turns is a chat.
  const chat = Boolean(system) || history.length > 0;
  const cls = chat ? "ChatModel" : "TextGenerationModel";
  const model = p.isTuned
    ? `${cls}.from_pretrained(${q(p.baseModel)}).get_tuned_model(${q(p.model)})`
    : `${cls}.from_pretrained(${q(p.model)})`;
  const head = [
    "import os",
    "",
    "import tunelab",
    `from tunelab.sdk import ${cls}`,
    "",
    `tunelab.init(url=${q(p.server)}, api_key=os.environ["TUNELAB_API_KEY"])`,
    `model = ${model}`,
  ];
  const author = (m) => (m.role === "assistant" ? "model" : "user");
  const call = chat
    ? [
        "chat = model.start_chat(",
        ...(system ? [`    context=${q(system.content)},`] : []),
        ...(history.length
          ? ["    message_history=[",
             ...history.map((m) => `        {"author": ${q(author(m))}, "content": ${q(m.content)}},`),
             "    ],"]
          : []),
        ...params.map((x) => `    ${x},`),
        ")",
        `response = chat.send_message(${q(last ? last.content : "")})`,
      ]
    : ["response = model.predict(", `    ${q(last ? last.content : "")},`, ...params.map((x) => `    ${x},`), ")"];
  return [...head, ...call, "print(response.text)", ""].join("\n");
}

export function openaiClient(p) {
  const msgs = p.messages.map((m) => `        {"role": ${q(m.role)}, "content": ${q(m.content)}},`);
  return [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${q(p.server + "/v1")}, api_key=os.environ["TUNELAB_API_KEY"])`,
    "response = client.chat.completions.create(",
    `    model=${q(p.model)},`,
    "    messages=[",
    ...msgs,
    "    ],",
    `    temperature=${p.temperature},`,
    `    top_p=${p.topP},`,
    `    max_tokens=${p.maxTokens},`,
    `    extra_body={"top_k": ${p.topK}},  # TuneLab extension; 0 disables`,
    ")",
    "print(response.choices[0].message.content)",
    "",
  ].join("\n");
}

/** The chat-completions body of a side's request, as the page sends it (less the streaming). */
export function requestBody(p) {
  return { model: p.model, messages: p.messages, temperature: p.temperature, top_p: p.topP, top_k: p.topK, max_tokens: p.maxTokens };
}

export function curl(p) {
  const body = JSON.stringify(requestBody(p), null, 2);
  const shellQuoted = "'" + body.replaceAll("'", "'\\''") + "'";
  return [
    `curl -sS ${p.server}/v1/chat/completions \\`,
    '  -H "Authorization: Bearer $TUNELAB_API_KEY" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d ${shellQuoted}`,
    "",
  ].join("\n");
}

export const SNIPPETS = [
  ["python", "Python SDK", pythonSdk],
  ["openai", "openai client", openaiClient],
  ["curl", "curl", curl],
];
