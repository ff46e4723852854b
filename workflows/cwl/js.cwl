#!/usr/bin/env cwl-runner
# A JavaScript expression (node runs it): the message upper-cased into a file.
cwlVersion: v1.2
class: CommandLineTool
requirements:
  InlineJavascriptRequirement: {}
baseCommand: echo
inputs:
  message:
    type: string
    default: shout
outputs:
  loud:
    type: stdout
arguments:
  - valueFrom: $(inputs.message.toUpperCase())
stdout: loud.txt
