#!/usr/bin/env cwl-runner
# A CommandLineTool: echo a message into a file (its stdout).
cwlVersion: v1.2
class: CommandLineTool
doc: Writes the message to greeting.txt.
baseCommand: echo
inputs:
  message:
    type: string
    default: Hello from KREE
    doc: What to write.
    inputBinding:
      position: 1
outputs:
  greeting:
    type: stdout
stdout: greeting.txt
