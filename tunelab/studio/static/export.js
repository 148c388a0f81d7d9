// Export / download of a model version: the server packs the export (POST :export, which may
// take a while for GGUF), then the browser fetches the archive with the key (a plain link could
// not carry it) and saves it under the server's file name.
import { api, getKey } from "./api.js";
import { h, toast } from "./dom.js";

const FORMATS = [
  ["peft", "PEFT adapter (PEFT, vLLM)"],
  ["merged", "Merged model (transformers)"],
  ["gguf:f16", "GGUF f16 + Ollama Modelfile (llama.cpp)"],
  ["gguf:q8_0", "GGUF q8_0 + Ollama Modelfile (llama.cpp)"],
  ["gguf-lora:f16", "LoRA GGUF + base GGUF (llama.cpp --lora)"],
];
const EMBEDDING_FORMATS = [["merged", "sentence-transformers folder"]];

function size(bytes) {
  return bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MB` : `${Math.ceil(bytes / 1024)} kB`;
}

async function download(record) {
  const response = await fetch(record.download_url, { headers: { Authorization: `Bearer ${getKey() ?? ""}` } });
  if (!response.ok) throw new Error(`download failed: HTTP ${response.status}`);
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: record.filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** The format picker, Export button and status line for one version ({name, version, method}). */
export function exportControl(v) {
  const formats = v.method === "embedding" ? EMBEDDING_FORMATS : FORMATS;
  const select = h("select", { class: "export-format", "aria-label": `Export format for ${v.name}@${v.version}` },
    formats.map(([value, label]) => h("option", { value }, label)));
  const status = h("span", { class: "export-status muted" });
  const button = h("button", { class: "export ghost", onclick: async () => {
    const [format, quantization] = select.value.split(":");
    button.disabled = true;
    status.textContent = "exporting…";
    try {
      const record = await api(`/v1/tunedModels/${encodeURIComponent(v.name)}:export`, {
        method: "POST", json: { format, quantization: quantization || null, version: v.version },
      });
      await download(record);
      status.textContent = `${record.filename} · ${size(record.size_bytes)} · sha256 ${record.sha256.slice(0, 12)}…`;
      toast(`${record.filename} downloaded`);
    } catch (err) {
      status.textContent = "";
      toast(err.message, "bad");
    } finally {
      button.disabled = false;
    }
  } }, "Export");
  return h("div", { class: "version-export" }, h("small", { class: "muted" }, "Export"), select, button, status);
}
