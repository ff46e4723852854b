#!/usr/bin/env cwl-runner
# A long step to pause, resume, stop and kill.
cwlVersion: v1.2
class: CommandLineTool
baseCommand: sleep
inputs:
  seconds:
    type: int
    default: 600
    inputBinding: {position: 1}
outputs: []
