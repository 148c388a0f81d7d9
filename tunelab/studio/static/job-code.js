// "View code" for a tuning job: the same job as REST (curl), Python SDK and CLI code. Strings
// are written with JSON.stringify, whose output is also a valid Python string literal.
const q = (s) => JSON.stringify(s);
/** A shell word: single-quoted, a quote inside it closed, escaped and reopened. */
const sh = (s) => `'${String(s).replaceAll("'", "'\\''")}'`;

/** The body of POST /v1/tuningJobs that creates this job again (datasets by their ids). */
export function jobBody(job) {
  return { method: job.method, tuned_model_display_name: job.display_name, datasets: given(job), config: job.config };
}

/** The job's datasets by role, without the optional roles it was submitted without (a job made
 * by `tunelab tune` stores them as null, which no face takes back). */
const given = (job) => Object.fromEntries(Object.entries(job.datasets).filter(([, id]) => id));

export function jobCurl(job, server) {
  const body = JSON.stringify(jobBody(job), null, 2);
  return [
    `curl -sS ${server}/v1/tuningJobs \\`,
    '  -H "Authorization: Bearer $TUNELAB_API_KEY" \\',
    '  -H "Content-Type: application/json" \\',
    `  -d '${body.replaceAll("'", "'\\''")}'`,
    "",
  ].join("\n");
}

/** A JSON value as Python: lists and dicts too (an RFT grader, a devices list). */
const pyValue = (v) =>
  v === null ? "None" : v === true ? "True" : v === false ? "False" : typeof v === "string" ? q(v)
    : Array.isArray(v) ? `[${v.map(pyValue).join(", ")}]`
    : typeof v === "object" ? `{${Object.entries(v).map(([k, x]) => `${q(k)}: ${pyValue(x)}`).join(", ")}}`
    : String(v);

export function jobSdk(job, server) {
  const roles = Object.keys(given(job));
  if (job.method !== "sft" || roles.some((r) => !["train", "validation"].includes(r))) return jobSdkSubmit(job, server);
  const { method, base_model: base, ...config } = job.config;
  const args = [
    `source_model=${q(base)}`,
    `train_dataset=${q(job.datasets.train)},  # a dataset id, or a path to a JSONL file to upload`,
    job.datasets.validation ? `validation_dataset=${q(job.datasets.validation)},` : null,
    `tuned_model_display_name=${q(job.display_name)}`,
    ...Object.entries(config).map(([k, v]) => `${k}=${pyValue(v)}`),
  ].filter(Boolean).map((a) => `    ${a}${a.endsWith(",") || a.includes("# ") ? "" : ","}`);
  return [
    "import os",
    "",
    "import tunelab",
    "from tunelab import sft",
    "",
    `tunelab.init(url=${q(server)}, api_key=os.environ["TUNELAB_API_KEY"])`,
    "job = sft.train(",
    ...args,
    ")",
    "print(job.resource_name)",
    "",
  ].join("\n");
}

/** Any method's job through the SDK's one submit call (what tune_model_rlhf, tune_model_dpo,
 * tune_model_rft end in), datasets by role. */
function jobSdkSubmit(job, server) {
  const { method, ...config } = job.config;
  return [
    "import os",
    "",
    "import tunelab",
    "from tunelab.sdk.tuning import submit",
    "",
    `tunelab.init(url=${q(server)}, api_key=os.environ["TUNELAB_API_KEY"])`,
    "job = submit(",
    `    ${q(job.method)},`,
    `    ${q(job.display_name)},`,
    `    ${pyValue(given(job))},  # dataset ids by role, or paths of files to upload`,
    `    ${pyValue(config)},`,
    ")",
    "print(job.resource_name)",
    "",
  ].join("\n");
}

/** The option of `tunelab jobs submit` (and `tunelab tune METHOD`) for a dataset role: one per
 * role of the method table (tunelab/cli/jobs.py), so every method's job can be written. */
export const roleFlag = (role) => `--${role.replaceAll("_", "-")}`;

/** The CLI queues a job on the server's own machine from files: the uploaded files' names. */
export function jobCli(job, filenames) {
  const { method, ...config } = job.config;
  // An uploaded file's name as the client sent it: its last part only, and single-quoted, so
  // nothing in it ($, backticks) runs in the shell of whoever pastes the command.
  const base = (name) => name && name.split(/[\\/]/).pop();
  const file = (role) => base(filenames[role]) || `${role}.${role.endsWith("labels") ? "tsv" : "jsonl"}`;
  const data = Object.keys(given(job)).map((role) => `${roleFlag(role)} ${sh(file(role))}`);
  return [
    "# On the server's machine, with the files that were uploaded:",
    `cat > config.json <<'EOF'`,
    JSON.stringify(config, null, 2),
    "EOF",
    `tunelab jobs submit --method ${job.method} --name ${sh(job.display_name)} \\`,
    ...data.map((d) => `  ${d} \\`),
    "  --config config.json",
    "",
  ].join("\n");
}
