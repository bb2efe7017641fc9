"""Run configuration: sections (base, inputs, stage_sections), the whole file (schema.RunConfig), loading and errors."""
