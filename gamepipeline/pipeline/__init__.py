"""The pipeline language: template model, validation, ``${{ }}`` expressions, compiler.

Nothing in this package does I/O; it can be tested alone. The public API:

- ``parse_document(text, source=...)`` reads YAML or JSON safely into plain data.
- ``load_template(data)`` validates a template document into a ``Template``.
- ``bind(template, args, envs)`` checks and substitutes ``${{ args.X }}``/``${{ envs.X }}``
  and returns a ``BoundPipeline`` whose values are final.
- ``compile_playbook(bound, pipeline_id=...)`` builds the Ansible play (plain data) and
  ``render_playbook(play)`` writes it as YAML with every string marked ``!unsafe``.
- ``step_index_of_task(task_name)`` maps a compiled task's name back to its step index.

Every user mistake raises ``ValidationError`` (a ``PipelineError``) listing each problem
with its path.
"""
