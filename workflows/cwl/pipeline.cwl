#!/usr/bin/env cwl-runner
# A two-step Workflow: echo a message, then count its words.
cwlVersion: v1.2
class: Workflow
doc: Echo a message, then count its words with wc.
inputs:
  message:
    type: string
    default: one two three four
    doc: The text to count.
outputs:
  greeting:
    type: File
    outputSource: echo/out
  words:
    type: File
    outputSource: count/out
steps:
  echo:
    run:
      class: CommandLineTool
      baseCommand: echo
      inputs:
        text:
          type: string
          inputBinding: {position: 1}
      outputs:
        out: {type: stdout}
      stdout: greeting.txt
    in:
      text: message
    out: [out]
  count:
    run:
      class: CommandLineTool
      baseCommand: [wc, -w]
      inputs:
        file: File
      outputs:
        out: {type: stdout}
      stdin: $(inputs.file.path)
      stdout: words.txt
    in:
      file: echo/out
    out: [out]
