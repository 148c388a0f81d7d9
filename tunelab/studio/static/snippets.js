// "View code": the current prompt and parameters as Python SDK, openai-client and curl code.
// Strings are written with JSON.stringify, whose output is also a valid Python string literal.

const q = (s) => JSON.stringify(s);

function messages(p) {
  return [...(p.system ? [{ role: "system", content: p.system }] : []), { role: "user", content: p.prompt }];
}

export function pythonSdk(p) {
  const params = [`temperature=${p.temperature}`, `max_output_tokens=${p.maxTokens}`, `top_p=${p.topP}`, `top_k=${p.topK}`];
  const cls = p.system ? "ChatModel" : "TextGenerationModel";
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
  const call = p.system
    ? [`chat = model.start_chat(`, `    context=${q(p.system)},`, ...params.map((x) => `    ${x},`), ")",
       `response = chat.send_message(${q(p.prompt)})`]
    : ["response = model.predict(", `    ${q(p.prompt)},`, ...params.map((x) => `    ${x},`), ")"];
  return [...head, ...call, "print(response.text)", ""].join("\n");
}

export function openaiClient(p) {
  const msgs = messages(p).map((m) => `        ${JSON.stringify(m).replace(/^\{"role":/, '{"role": ').replace(/,"content":/, ', "content": ')},`);
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

export function curl(p) {
  const body = JSON.stringify({
    model: p.model, messages: messages(p), temperature: p.temperature, top_p: p.topP, top_k: p.topK, max_tokens: p.maxTokens,
  }, null, 2);
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
