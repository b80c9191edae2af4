"""The commented config template written by ``scanfort agent init``."""

from __future__ import annotations

TEMPLATE = '''\
# ScanFort edge agent configuration (TOML). Check it with: scanfort agent check
# Relative paths are relative to this file. Sizes accept "500 MB", "2 GiB" or bytes.

# age recipients (public keys) every protected copy is encrypted to; written by
# `scanfort agent enroll`, or add your own (e.g. an offline escrow key).
recipients = [{recipients}]

spool_dir = "{spool_dir}"      # protected copies and the journal (keep on a local disk)
workers = 2                    # protect worker processes (files protected in parallel)
settle_seconds = 5             # size and mtime unchanged this long = the file is complete
incomplete_grace_seconds = 120 # a DICOM file still truncated after this is quarantined
reconcile_seconds = 60         # full rescan of every folder (watchdog can miss events)
log_level = "info"             # debug | info | warning | error
# name = "CT room 2"             # this workstation's label on the central dashboard
# The site's pseudonymisation secret (written by `scanfort agent enroll`): DICOM mode keys
# patient pseudonyms with it, so one patient stays one pseudonymous patient in the PACS.
# pseudonym_secret_file = "pseudonym.secret"
# log_dir = "/var/log/scanfort"  # default: the platformdirs log dir

[disk]
low_watermark = "1 GB"         # intake pauses below this much free space on the spool volume
high_watermark = "2 GB"        # ... and resumes above this

[retry]
initial_seconds = 5            # first retry delay, doubled each attempt (with jitter)
max_seconds = 3600             # cap; transient errors are retried forever

[central]
# url = "https://central.example.org:8600"
# agent_id = ""                # written by `scanfort agent enroll`
# token = ""                   # written by `scanfort agent enroll`
heartbeat_seconds = 30

[[folders]]
path = "{inbox}"
recursive = true
include = ["*"]                # shell patterns on the name or the relative path
exclude = []                   # names ending .partial/.tmp and hidden files are always skipped
polling = false                # true for network shares (no change notifications there)
destinations = ["share"]
after_ack = "keep"             # keep | move | delete, once every destination acknowledged
# move_to = "/data/sent"       # required with after_ack = "move"
# follow_symlinks = false      # take links, only to files inside a watched folder
# dicom_policy = "profile"      # DICOM mode: PS3.15 basic profile | "pixels-only"
# dicom_options = ["retain-uids", "retain-long-full-dates"]  # profile options; [] = strictest

[destinations.share]
kind = "folder"                # central | dicomweb | dicom | folder
path = "{outbox}"
mode = "file"                  # file | dicom | auto (folder and central destinations)

# [destinations.central]
# kind = "central"             # uses [central] url and token
#
# [destinations.pacs]
# kind = "dicomweb"            # STOW-RS; always DICOM mode
# url = "http://127.0.0.1:8042/dicom-web"
# username = "scanfort"
# password = "..."
#
# [destinations.modality-pacs]
# kind = "dicom"               # C-STORE; always DICOM mode
# host = "127.0.0.1"
# port = 4242
# ae_title = "ORTHANC"
# calling_ae_title = "SCANFORT"
'''
