# llmsched_select -- let llmsched pick the pool member for each HTTP request.
#
# For every request the iRule sends the pool's active members to the llmsched
# select API (POST /scheduler/select) over a sideband connection and sends the
# request to the member it answers. Whenever llmsched cannot help -- it answers
# "none" or "fallback", returns a non-200 status, times out, refuses the
# connection or sends something unparsable, or the member it names is not up --
# the pool's own load-balancing method decides, so the virtual server keeps
# working without llmsched.
#
# "busy" (a greybox pool with admission control: every member is past its
# limits) answers the client 503 with Retry-After instead of sending the
# request anywhere. After a request went to the member llmsched picked, the
# response's status and time to its headers are reported (POST
# /scheduler/outcome, fire-and-forget): llmsched stops counting the request once
# the engine's own figures show it, and a failure feeds its circuit breaker. The
# report sends no "ttft_at", so llmsched takes it as a header time ("headers"),
# never as a time to first token -- unless llmsched_report_at is "first_byte":
# then a streamed answer is reported at its first byte, as "first_token".
#
# Attach to an HTTP virtual server whose default pool is the LLM pool (with a
# OneConnect profile so every request gets its own decision). See README.md.
# Plain Tcl 8.4 iRule syntax; no procs, so it runs on any BIG-IP v11.0+.

when RULE_INIT {
    # Where the select API listens: "ip:port" for IPv4, "addr.port" for IPv6
    # (sideband syntax), or the name of a helper virtual server, e.g.
    # "/Common/llmsched_api_vs" (needed for HTTPS or several API replicas).
    set static::llmsched_api "10.0.0.10:8080"
    # Host header and path of the select request.
    set static::llmsched_host "llmsched"
    set static::llmsched_path "/scheduler/select"
    # Milliseconds to wait for the TCP connection to the API.
    set static::llmsched_connect_timeout_ms 50
    # Milliseconds for the rest of the exchange (send + answer), after connect.
    set static::llmsched_timeout_ms 200
    # Seconds a sideband connection may sit idle before BIG-IP reaps it.
    set static::llmsched_idle_s 5
    # Partition sent when the pool name carries none (not "/Partition/pool").
    set static::llmsched_partition "Common"
    # Only requests whose path matches this glob ask llmsched ("/v1/*": only
    # OpenAI calls); other requests go straight to the pool's load balancing.
    set static::llmsched_uri_glob "*"
    # With fewer active members than this there is nothing to choose.
    set static::llmsched_min_members 2
    # 1: log every decision (local0.debug); 0: quiet. Keep 0 under load.
    set static::llmsched_debug 0
    # 1: log failures to reach the API (local0.warn); 0: quiet.
    set static::llmsched_log_errors 1
    # Seconds in the Retry-After of the 503 answered when llmsched says "busy".
    set static::llmsched_busy_retry_after_s 2
    # 1: report each picked request's status and time to its response headers
    # (only greybox pools use them); 0: never.
    set static::llmsched_report_outcomes 1
    # When a streamed answer (Content-Type text/event-stream, status 200) is
    # reported: "headers" (at HTTP_RESPONSE; the time is not a TTFT and trains
    # nothing) or "first_byte" (HTTP::collect 1 holds the headers until the
    # stream's first byte, which vLLM and SGLang send with the first token; the
    # time is reported as a TTFT and the TTFT predictor learns from it; the
    # client gets the headers together with that byte). Answers that are not
    # streamed are always reported at their headers.
    set static::llmsched_report_at "headers"
    # Path of the outcome report.
    set static::llmsched_outcome_path "/scheduler/outcome"
    # Milliseconds to connect for a report, and again to hand it to TCP; the
    # response to the client waits for these, never for the API's answer.
    set static::llmsched_outcome_timeout_ms 20
}

when CLIENT_ACCEPTED {
    # The virtual's default pool, remembered before any `pool ... member` of an
    # earlier request on this connection changes what LB::server reports.
    set llmsched_default_pool [LB::server pool]
}

when HTTP_REQUEST {
    set llmsched_picked ""
    set llmsched_report ""
    set llmsched_busy 0
    set llmsched_pool ""
    if { [info exists llmsched_default_pool] && $llmsched_default_pool ne "" } {
        set llmsched_pool $llmsched_default_pool
    } else {
        set llmsched_pool [LB::server pool]
    }

    # One pass through this loop; `break` leaves it with the decision so far.
    # llmsched_failed marks the API (not its answer) as the reason for falling
    # back, which is worth a warning even with debug off.
    set llmsched_reason ""
    set llmsched_failed 0
    foreach llmsched_once [list 1] {
        if { $llmsched_pool eq "" } {
            break
        }
        if { ![string match $static::llmsched_uri_glob [HTTP::path]] } {
            set llmsched_reason "path not scheduled"
            break
        }

        # "/Partition/pool" (or "/Partition/folder/pool") -> partition, pool.
        set llmsched_pool_name $llmsched_pool
        set llmsched_part $static::llmsched_partition
        if { [string index $llmsched_pool 0] eq "/" } {
            set llmsched_path_parts [split [string range $llmsched_pool 1 end] "/"]
            if { [llength $llmsched_path_parts] >= 2 } {
                set llmsched_part [lindex $llmsched_path_parts 0]
                set llmsched_pool_name [lindex $llmsched_path_parts end]
            }
        }

        # Candidates: members keyed as llmsched knows them (route domain
        # stripped, IPv6 bracketed), with the F5 address kept for `pool`.
        if { [catch {active_members -list $llmsched_pool} llmsched_active] } {
            set llmsched_reason "active_members failed: $llmsched_active"
            break
        }
        set llmsched_keys {}
        set llmsched_addrs {}
        set llmsched_ports {}
        foreach llmsched_m $llmsched_active {
            set llmsched_addr [lindex $llmsched_m 0]
            set llmsched_port [lindex $llmsched_m 1]
            set llmsched_bare $llmsched_addr
            set llmsched_pct [string first "%" $llmsched_bare]
            if { $llmsched_pct >= 0 } {
                set llmsched_bare [string range $llmsched_bare 0 [expr {$llmsched_pct - 1}]]
            }
            if { [string first ":" $llmsched_bare] >= 0 } {
                lappend llmsched_keys "\[$llmsched_bare\]:$llmsched_port"
            } else {
                lappend llmsched_keys "$llmsched_bare:$llmsched_port"
            }
            lappend llmsched_addrs $llmsched_addr
            lappend llmsched_ports $llmsched_port
        }
        if { [llength $llmsched_keys] < $static::llmsched_min_members } {
            set llmsched_reason "[llength $llmsched_keys] active member(s)"
            break
        }

        # The select request. Names are JSON-escaped; all of it is ASCII, so
        # the character count is the byte count for Content-Length.
        set llmsched_esc [list "\\" "\\\\" "\"" "\\\""]
        set llmsched_members "\"[join $llmsched_keys {","}]\""
        set llmsched_body "{\"pool_name\":\"[string map $llmsched_esc $llmsched_pool_name]\",\"partition\":\"[string map $llmsched_esc $llmsched_part]\",\"members\":\[$llmsched_members\]}"
        set llmsched_request "POST $static::llmsched_path HTTP/1.1\r\nHost: $static::llmsched_host\r\nContent-Type: application/json\r\nAccept: text/plain\r\nContent-Length: [string length $llmsched_body]\r\nConnection: close\r\n\r\n$llmsched_body"

        set llmsched_t0 [clock clicks -milliseconds]
        set llmsched_conn ""
        set llmsched_cstatus ""
        if { [catch {connect -timeout $static::llmsched_connect_timeout_ms -idle $static::llmsched_idle_s -status llmsched_cstatus $static::llmsched_api} llmsched_conn] || $llmsched_conn eq "" } {
            set llmsched_reason "no connection to $static::llmsched_api ($llmsched_cstatus$llmsched_conn)"
            set llmsched_failed 1
            set llmsched_conn ""
            break
        }
        set llmsched_deadline [expr {[clock clicks -milliseconds] + $static::llmsched_timeout_ms}]

        # Send, then read until the answer is complete, the API closes, or the
        # deadline passes.
        set llmsched_resp ""
        set llmsched_done 0
        set llmsched_failed 1
        set llmsched_clen -1
        if { [catch {send -timeout $static::llmsched_timeout_ms -status llmsched_sstatus $llmsched_conn $llmsched_request} llmsched_err] || $llmsched_sstatus ne "sent" } {
            set llmsched_reason "send failed: $llmsched_err"
        } else {
            while { 1 } {
                set llmsched_left [expr {$llmsched_deadline - [clock clicks -milliseconds]}]
                if { $llmsched_left <= 0 } {
                    set llmsched_reason "no answer within $static::llmsched_timeout_ms ms"
                    break
                }
                set llmsched_rstatus ""
                if { [catch {recv -timeout $llmsched_left -status llmsched_rstatus $llmsched_conn} llmsched_chunk] } {
                    set llmsched_reason "recv failed: $llmsched_chunk"
                    break
                }
                append llmsched_resp $llmsched_chunk
                set llmsched_hend [string first "\r\n\r\n" $llmsched_resp]
                if { $llmsched_hend >= 0 } {
                    set llmsched_head [string tolower [string range $llmsched_resp 0 $llmsched_hend]]
                    set llmsched_rest [string range $llmsched_resp [expr {$llmsched_hend + 4}] end]
                    if { [regexp {\ncontent-length:[ \t]*([0-9]+)} $llmsched_head -> llmsched_clen] } {
                        if { [string length $llmsched_rest] >= $llmsched_clen } {
                            set llmsched_done 1
                            break
                        }
                    } elseif { [regexp {\ntransfer-encoding:[^\n]*chunked} $llmsched_head] } {
                        if { [string first "0\r\n\r\n" $llmsched_rest] == 0 || [string first "\r\n0\r\n\r\n" $llmsched_rest] >= 0 } {
                            set llmsched_done 1
                            break
                        }
                    }
                }
                if { $llmsched_rstatus eq "closed" } {
                    # Read-to-close answers are complete once the head is in.
                    if { $llmsched_hend >= 0 } {
                        set llmsched_done 1
                    } else {
                        set llmsched_reason "API closed the connection early"
                    }
                    break
                }
                if { $llmsched_rstatus eq "failed" } {
                    set llmsched_reason "recv failed"
                    break
                }
            }
        }
        catch {close $llmsched_conn}
        set llmsched_conn ""
        if { !$llmsched_done } {
            break
        }
        set llmsched_failed 0

        # Status line and body.
        if { ![regexp {^HTTP/1\.[01] ([0-9][0-9][0-9])} $llmsched_resp -> llmsched_code] } {
            set llmsched_reason "unparsable answer"
            set llmsched_failed 1
            break
        }
        if { $llmsched_code ne "200" } {
            set llmsched_reason "API answered HTTP $llmsched_code"
            set llmsched_failed 1
            break
        }
        set llmsched_text [string range $llmsched_resp [expr {$llmsched_hend + 4}] end]
        if { $llmsched_clen >= 0 } {
            set llmsched_text [string range $llmsched_text 0 [expr {$llmsched_clen - 1}]]
        } elseif { [regexp {\ntransfer-encoding:[^\n]*chunked} $llmsched_head] } {
            set llmsched_raw $llmsched_text
            set llmsched_text ""
            while { 1 } {
                set llmsched_eol [string first "\r\n" $llmsched_raw]
                if { $llmsched_eol < 0 } {
                    break
                }
                if { [scan [string range $llmsched_raw 0 [expr {$llmsched_eol - 1}]] %x llmsched_size] != 1 || $llmsched_size <= 0 } {
                    break
                }
                append llmsched_text [string range $llmsched_raw [expr {$llmsched_eol + 2}] [expr {$llmsched_eol + 1 + $llmsched_size}]]
                set llmsched_raw [string range $llmsched_raw [expr {$llmsched_eol + 4 + $llmsched_size}] end]
            }
        }
        set llmsched_answer [string trim $llmsched_text]

        # The answer must be one of the members we sent, and up right now.
        set llmsched_idx [lsearch -exact $llmsched_keys $llmsched_answer]
        if { $llmsched_idx < 0 } {
            if { $llmsched_answer eq "busy" } {
                set llmsched_busy 1
                set llmsched_reason "API answered busy"
            } elseif { $llmsched_answer eq "none" || $llmsched_answer eq "fallback" } {
                set llmsched_reason "API answered $llmsched_answer"
            } else {
                set llmsched_reason "API answered an unknown member '[string range $llmsched_answer 0 63]'"
                set llmsched_failed 1
            }
            break
        }
        set llmsched_addr [lindex $llmsched_addrs $llmsched_idx]
        set llmsched_port [lindex $llmsched_ports $llmsched_idx]
        if { [catch {LB::status pool $llmsched_pool member $llmsched_addr $llmsched_port} llmsched_status] || $llmsched_status ne "up" } {
            set llmsched_reason "$llmsched_answer is $llmsched_status"
            break
        }
        set llmsched_picked [list $llmsched_addr $llmsched_port]
        set llmsched_reason "$llmsched_answer in [expr {[clock clicks -milliseconds] - $llmsched_t0}] ms"
        if { $static::llmsched_report_outcomes } {
            # The report's head; HTTP_RESPONSE adds the status and the time
            # (its braces escaped: an unbalanced one would end this event).
            set llmsched_report "\{\"pool_name\":\"[string map $llmsched_esc $llmsched_pool_name]\",\"partition\":\"[string map $llmsched_esc $llmsched_part]\",\"member\":\"[string map $llmsched_esc $llmsched_answer]\""
            set llmsched_sent_ms [clock clicks -milliseconds]
        }
        break
    }

    if { $llmsched_pool eq "" } {
        if { $static::llmsched_log_errors } {
            log local0.warn "llmsched: no pool on [virtual name], request left alone"
        }
    } elseif { $llmsched_picked ne "" } {
        pool $llmsched_pool member [lindex $llmsched_picked 0] [lindex $llmsched_picked 1]
        if { $static::llmsched_debug } {
            log local0.debug "llmsched: $llmsched_pool -> $llmsched_reason"
        }
    } elseif { $llmsched_busy } {
        # Every member is past its limits: tell the client to come back rather
        # than queue the request on a saturated engine. No pool, no member.
        if { $static::llmsched_debug } {
            log local0.debug "llmsched: $llmsched_pool -> 503 busy"
        }
        HTTP::respond 503 content "{\"error\": {\"message\": \"Every server of this model is at its limit; retry in $static::llmsched_busy_retry_after_s s.\", \"type\": \"service_unavailable_error\", \"param\": null, \"code\": \"overloaded\"}}" Content-Type "application/json" Retry-After $static::llmsched_busy_retry_after_s Connection "close"
        return
    } else {
        # Reset any member chosen for an earlier request on this connection.
        pool $llmsched_pool
        if { $static::llmsched_debug } {
            log local0.debug "llmsched: $llmsched_pool -> pool load balancing ($llmsched_reason)"
        } elseif { $llmsched_failed && $static::llmsched_log_errors } {
            log local0.warn "llmsched: $llmsched_pool -> pool load balancing ($llmsched_reason)"
        }
    }
}

when LB_FAILED {
    # The member llmsched picked refused the connection: let the pool choose
    # once more instead of failing the request. Only after our own pick, so a
    # pool with nothing left cannot loop.
    if { [info exists llmsched_picked] && $llmsched_picked ne "" } {
        if { $static::llmsched_debug } {
            log local0.debug "llmsched: [lindex $llmsched_picked 0]:[lindex $llmsched_picked 1] failed, reselecting in $llmsched_pool"
        }
        set llmsched_picked ""
        LB::reselect pool $llmsched_pool
    }
}

when HTTP_REQUEST_SEND {
    # The request leaves for the member llmsched picked: its time starts now.
    if { [info exists llmsched_report] && $llmsched_report ne "" } {
        set llmsched_sent_ms [clock clicks -milliseconds]
    }
}

when HTTP_RESPONSE {
    # Report the status and the milliseconds from sending the request to these
    # response headers (the whole answer when it is not streamed, only its start
    # when it is) -- or, with llmsched_report_at "first_byte" and a stream, to
    # its first byte (HTTP_RESPONSE_DATA). Fire-and-forget: the API's answer is
    # never read, and a failure costs one warning at most. Not after LB_FAILED:
    # the pool chose that member.
    if { [info exists llmsched_report] && $llmsched_report ne "" && $llmsched_picked ne "" } {
        if { $static::llmsched_report_at eq "first_byte" && [HTTP::status] == 200
             && [string match -nocase "text/event-stream*" [HTTP::header value Content-Type]] } {
            set llmsched_report "$llmsched_report,\"status\":200"
            HTTP::collect 1
            return
        }
        set llmsched_out "$llmsched_report,\"status\":[HTTP::status],\"ttft_ms\":[expr {[clock clicks -milliseconds] - $llmsched_sent_ms}]\}"
        set llmsched_report ""
        set llmsched_out_request "POST $static::llmsched_outcome_path HTTP/1.1\r\nHost: $static::llmsched_host\r\nContent-Type: application/json\r\nContent-Length: [string length $llmsched_out]\r\nConnection: close\r\n\r\n$llmsched_out"
        set llmsched_out_conn ""
        set llmsched_out_status ""
        set llmsched_out_err ""
        if { [catch {connect -timeout $static::llmsched_outcome_timeout_ms -idle $static::llmsched_idle_s -status llmsched_out_status $static::llmsched_api} llmsched_out_conn] || $llmsched_out_conn eq "" } {
            set llmsched_out_err "no connection to $static::llmsched_api ($llmsched_out_status$llmsched_out_conn)"
        } else {
            set llmsched_out_sent ""
            if { [catch {send -timeout $static::llmsched_outcome_timeout_ms -status llmsched_out_sent $llmsched_out_conn $llmsched_out_request} llmsched_out_err] || $llmsched_out_sent ne "sent" } {
                set llmsched_out_err "send failed: $llmsched_out_sent $llmsched_out_err"
            } else {
                set llmsched_out_err ""
            }
            catch {close $llmsched_out_conn}
        }
        if { $llmsched_out_err ne "" } {
            if { $static::llmsched_log_errors } {
                log local0.warn "llmsched: $llmsched_pool outcome not reported ($llmsched_out_err)"
            }
        } elseif { $static::llmsched_debug } {
            log local0.debug "llmsched: $llmsched_pool reported $llmsched_out"
        }
    }
}

when HTTP_RESPONSE_DATA {
    # The stream's first byte (llmsched_report_at "first_byte"): report its time
    # as a TTFT. The collected byte is released when this event ends. The
    # sending below is HTTP_RESPONSE's (iRules of v11.0 have no procs).
    if { [info exists llmsched_report] && $llmsched_report ne "" && $llmsched_picked ne "" } {
        set llmsched_out "$llmsched_report,\"ttft_ms\":[expr {[clock clicks -milliseconds] - $llmsched_sent_ms}],\"ttft_at\":\"first_token\"\}"
        set llmsched_report ""
        set llmsched_out_request "POST $static::llmsched_outcome_path HTTP/1.1\r\nHost: $static::llmsched_host\r\nContent-Type: application/json\r\nContent-Length: [string length $llmsched_out]\r\nConnection: close\r\n\r\n$llmsched_out"
        set llmsched_out_conn ""
        set llmsched_out_status ""
        set llmsched_out_err ""
        if { [catch {connect -timeout $static::llmsched_outcome_timeout_ms -idle $static::llmsched_idle_s -status llmsched_out_status $static::llmsched_api} llmsched_out_conn] || $llmsched_out_conn eq "" } {
            set llmsched_out_err "no connection to $static::llmsched_api ($llmsched_out_status$llmsched_out_conn)"
        } else {
            set llmsched_out_sent ""
            if { [catch {send -timeout $static::llmsched_outcome_timeout_ms -status llmsched_out_sent $llmsched_out_conn $llmsched_out_request} llmsched_out_err] || $llmsched_out_sent ne "sent" } {
                set llmsched_out_err "send failed: $llmsched_out_sent $llmsched_out_err"
            } else {
                set llmsched_out_err ""
            }
            catch {close $llmsched_out_conn}
        }
        if { $llmsched_out_err ne "" } {
            if { $static::llmsched_log_errors } {
                log local0.warn "llmsched: $llmsched_pool outcome not reported ($llmsched_out_err)"
            }
        } elseif { $static::llmsched_debug } {
            log local0.debug "llmsched: $llmsched_pool reported $llmsched_out"
        }
    }
}
