#!/usr/bin/env cwl-runner
# A Workflow whose second step fails (a command that exits 3).
cwlVersion: v1.2
class: Workflow
inputs:
  code:
    type: int
    default: 3
outputs: {}
steps:
  hello:
    run:
      class: CommandLineTool
      baseCommand: "true"
      inputs: []
      outputs: []
    in: {}
    out: []
  broken:
    run:
      class: CommandLineTool
      baseCommand: [sh, -c]
      arguments: ["exit $0"]
      inputs:
        code:
          type: int
          inputBinding: {position: 1}
      outputs: []
    in:
      code: code
    out: []
