// "View code" for a tuning job: the same job as REST (curl), Python SDK and CLI code. Strings
// are written with JSON.stringify, whose output is also a valid Python string literal.
const q = (s) => JSON.stringify(s);

/** The body of POST /v1/tuningJobs that creates this job again (datasets by their ids). */
export function jobBody(job) {
  return { method: job.method, tuned_model_display_name: job.display_name, datasets: job.datasets, config: job.config };
}

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

const pyValue = (v) => (v === null ? "None" : v === true ? "True" : v === false ? "False" : typeof v === "string" ? q(v) : String(v));

export function jobSdk(job, server) {
  const roles = Object.keys(job.datasets);
  if (job.method !== "sft" || roles.some((r) => !["train", "validation"].includes(r))) return null;
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

/** The CLI queues a job on the server's own machine from files: the uploaded files' names. */
export function jobCli(job, filenames) {
  const roles = Object.keys(job.datasets);
  if (roles.some((r) => !["train", "validation"].includes(r))) return null;
  const { method, ...config } = job.config;
  const file = (role) => filenames[role] || `${role}.jsonl`;
  return [
    "# On the server's machine, with the files that were uploaded:",
    `cat > config.json <<'EOF'`,
    JSON.stringify(config, null, 2),
    "EOF",
    `tunelab jobs submit --method ${job.method} --name ${q(job.display_name)} \\`,
    `  --train ${q(file("train"))}${job.datasets.validation ? ` --validation ${q(file("validation"))}` : ""} \\`,
    "  --config config.json",
    "",
  ].join("\n");
}
