// A tuning config's fields as form inputs, built from its JSON schema (GET /v1/tuningMethods):
// label (`title`), input (enum: a select; boolean: a checkbox; integer/number: a number input
// with the schema's bounds; string: text; anything else, e.g. the RFT grader: JSON), default
// and help (`description`), and which fields come first (`x-form`, tunelab/configs/form.py).
// Nothing here names a method or a field: a config's new field or a new method shows by itself.
import { h } from "./dom.js";

const OWN_INPUTS = ["method", "base_model"]; // asked for beside the method, not as parameters

/** The value schema of a property and whether null is allowed (`X | None` is anyOf with null). */
function valueSchema(prop) {
  if (!prop.anyOf) return [prop, false];
  const kept = prop.anyOf.filter((v) => v.type !== "null");
  return [kept.length === 1 ? kept[0] : { anyOf: kept }, kept.length < prop.anyOf.length];
}

function kindOf(inner) {
  if (inner.enum) return "choice";
  return { boolean: "bool", integer: "int", number: "float", string: "text" }[inner.type] || "json";
}

/** How a value shows in its input: a float as one ("1.0"), objects as JSON, null as empty. */
function shown(field, value) {
  if (value === null || value === undefined) return "";
  if (field.kind === "json") return JSON.stringify(value, null, 2);
  if (field.kind === "float" && Number.isInteger(value)) return value.toFixed(1);
  return String(value);
}

/** The form's fields of a config schema, basic ones first, each with what its input needs. */
export function configFields(schema) {
  const props = schema.properties || {};
  const layout = schema["x-form"] || {};
  const basic = (layout.basic || []).filter((f) => f in props);
  const listed = new Set([...basic, ...(layout.advanced || [])]);
  // A property x-form does not list (a client of an older server) is advanced, not lost.
  const advanced = [...(layout.advanced || []).filter((f) => f in props),
    ...Object.keys(props).filter((f) => !listed.has(f) && !OWN_INPUTS.includes(f) && !("const" in props[f]))];
  const required = new Set(schema.required || []);
  return [...basic.map((f) => [f, "basic"]), ...advanced.map((f) => [f, "advanced"])].map(([name, group]) => {
    const prop = props[name];
    const [inner, nullable] = valueSchema(prop);
    const field = {
      name, group, nullable, inner, prop,
      kind: kindOf(inner),
      label: prop.title || name.replace(/_/g, " "),
      hint: prop.description || "",
      required: required.has(name) && !("default" in prop),
      hasDefault: "default" in prop,
      whenEmpty: prop["x-when-empty"],
    };
    field.initial = shown(field, prop.default);
    return field;
  });
}

/** The input of a field, showing `value` (text as the input holds it). */
export function fieldInput(field, value) {
  const id = `param-${field.name}`;
  const { inner } = field;
  if (field.kind === "choice") {
    return h("select", { id }, inner.enum.map((o) => h("option", { value: String(o), selected: String(o) === value }, String(o))));
  }
  if (field.kind === "bool") return h("input", { id, type: "checkbox", checked: value === "true" });
  if (field.kind === "json") {
    const example = field.prop.examples ? `e.g. ${JSON.stringify(field.prop.examples[0])}` : "JSON";
    return h("textarea", { id, rows: "6", spellcheck: "false", class: "code", placeholder: example }, value);
  }
  if (field.kind === "text") {
    return h("input", { id, type: "text", maxlength: String(inner.maxLength ?? 10000), value, placeholder: field.nullable ? "none" : "" });
  }
  const empty = field.whenEmpty !== undefined ? `default ${field.whenEmpty}` : field.nullable ? "none" : "";
  return h("input", {
    id, type: "number", value, placeholder: empty,
    step: field.kind === "float" ? "any" : "1",
    min: inner.minimum ?? inner.exclusiveMinimum, max: inner.maximum ?? inner.exclusiveMaximum,
  });
}

/** The text a field's input holds ("true"/"false" for a checkbox). */
export function inputText(input) {
  return input.type === "checkbox" ? String(input.checked) : input.value.trim();
}

/**
 * A field's value as the config takes it, from its input's text: `{value}` (undefined: left to
 * the config's default), or `{error}` saying what is wrong, as the config would.
 */
export function readField(field, raw) {
  const { inner, label } = field;
  const name = label.toLowerCase();
  if (raw === "") {
    if (field.required) return { error: `write the ${name}` };
    return { value: field.nullable ? null : undefined };
  }
  if (field.kind === "bool") return { value: raw === "true" };
  if (field.kind === "choice") return { value: inner.enum.find((o) => String(o) === raw) };
  if (field.kind === "json") {
    try { return { value: JSON.parse(raw) }; } catch (_) { return { error: `the ${name} is not valid JSON` }; }
  }
  if (field.kind === "text") {
    return inner.maxLength != null && raw.length > inner.maxLength ? { error: `${name}: at most ${inner.maxLength} characters` } : { value: raw };
  }
  const value = Number(raw);
  if (!Number.isFinite(value) || (field.kind === "int" && !Number.isInteger(value))) {
    return { error: `${name} must be ${field.kind === "int" ? "a whole number" : "a number"}` };
  }
  if (inner.minimum != null && value < inner.minimum) return { error: `${name} must be at least ${inner.minimum}` };
  if (inner.exclusiveMinimum != null && value <= inner.exclusiveMinimum) return { error: `${name} must be more than ${inner.exclusiveMinimum}` };
  if (inner.maximum != null && value > inner.maximum) return { error: `${name} must be at most ${inner.maximum}` };
  if (inner.exclusiveMaximum != null && value >= inner.exclusiveMaximum) return { error: `${name} must be less than ${inner.exclusiveMaximum}` };
  return { value };
}

/** A config value as its input shows it (for "Tune again with these settings"). */
export function valueText(field, value) {
  if (field.kind === "bool") return String(Boolean(value));
  return shown(field, value);
}
