# harness.tcl -- run an iRule outside BIG-IP, against a real select API.
#
#   tclsh harness.tcl ?options? IRULE_FILE
#
# Stubs the BIG-IP commands llmsched_select.tcl uses; the sideband commands
# (connect/send/recv/close) are real Tcl sockets, so the iRule really talks
# HTTP to the API. Runs RULE_INIT, applies the overrides below to static::
# variables, then CLIENT_ACCEPTED and HTTP_REQUEST (and LB_FAILED on request),
# and, with -response, HTTP_REQUEST_SEND and HTTP_RESPONSE as BIG-IP would when
# the request went to a server. It prints the load-balancing decision on stdout:
#
#   pool /Common/demo-pool member 127.0.0.1 9001     a member was chosen
#   pool /Common/demo-pool                           the pool's own LB decides
#   none                                             the iRule chose nothing
#
# With -lb-failed 1 a second line tells what LB_FAILED did
# ("LB::reselect pool /Common/demo-pool" or "no reselect"). Then, when the
# rule answered the client itself (HTTP::respond, no server involved):
#
#   respond 503                                      the status
#   respond-header Retry-After 2                     one line per header
#   respond-body {"error": ...}                      the content
#
# and "http_response 200" when HTTP_RESPONSE ran, "http_response_data 1" when
# the rule collected the body (HTTP::collect 1) and HTTP_RESPONSE_DATA ran.
# Log lines, the requests sent, "harness: events ..." (the events the rule
# defines, in order) and "harness: sideband_open=N" go to stderr.
#
# Options (each also read from the environment variable in brackets):
#   -api HOST:PORT            static::llmsched_api            [LLMSCHED_API]
#   -pool NAME                the virtual's default pool      [LLMSCHED_POOL]
#   -member "ADDR PORT ?STATUS? ?ACTIVE?"   repeatable; STATUS is what
#                             LB::status answers (default up), ACTIVE 0 keeps
#                             it out of active_members        [LLMSCHED_MEMBERS,
#                             members separated by ";"]
#   -connect-timeout MS       static::llmsched_connect_timeout_ms
#   -timeout MS               static::llmsched_timeout_ms
#   -debug 0|1                static::llmsched_debug
#   -path PATH                HTTP::path / HTTP::uri (default /v1/chat/completions)
#   -set NAME VALUE           any other static::NAME
#   -lb-failed 0|1            fire LB_FAILED after HTTP_REQUEST
#   -response STATUS          a server answered STATUS: fire HTTP_REQUEST_SEND
#                             and HTTP_RESPONSE (not when the rule responded
#                             itself or chose no pool)
#   -response-after MS        the answer's headers come MS milliseconds after
#                             the request was sent (the clock is advanced, no
#                             waiting)
#   -response-api HOST:PORT   static::llmsched_api from HTTP_RESPONSE on, as if
#                             the API moved or died while the server worked
#   -content-type TYPE        the answer's Content-Type (default text/event-stream)
#   -first-byte-after MS      the body's first byte comes MS milliseconds after
#                             the request was sent: HTTP_RESPONSE_DATA runs then,
#                             when the rule called HTTP::collect in HTTP_RESPONSE
#
# Exit status: 0 when the iRule ran, 1 when it raised a Tcl error (which on
# BIG-IP would reset the client connection), 2 for bad arguments.

namespace eval ::h {
    variable events
    array set events {}
    variable order {}
    variable members {}
    variable pool ""
    variable path "/v1/chat/completions"
    variable overrides {}
    variable lb_failed 0
    variable decision "none"
    variable reselect "no reselect"
    variable conns
    array set conns {}
    variable next_conn 0
    variable wake 0
    variable response ""
    variable response_after 0
    variable response_api ""
    variable content_type "text/event-stream"
    variable first_byte_after 0
    variable collect ""
    variable skew_ms 0
    variable responded {}
    variable fired {}
}
namespace eval ::static {}
namespace eval ::LB {}
namespace eval ::HTTP {}
namespace eval ::IP {}

proc ::h::usage {message} {
    puts stderr "harness: $message"
    puts stderr "usage: tclsh harness.tcl ?-api H:P? ?-pool NAME? ?-member \"ADDR PORT ?STATUS? ?ACTIVE?\"?... IRULE_FILE"
    exit 2
}

# ---------------------------------------------------------------- BIG-IP stubs

proc when {event args} {
    # `when EVENT ?priority N? ?timing on? BODY`: remember the body.
    set ::h::events($event) [lindex $args end]
    lappend ::h::order $event
}

proc log {args} {
    puts stderr "log [join $args { }]"
}

proc pool {name args} {
    set ::h::decision [concat [list pool $name] $args]
}

proc virtual {args} {
    return "/Common/llm_vs"
}

proc active_members {args} {
    if {[lindex $args 0] ne "-list" || [llength $args] != 2} {
        error "harness: only `active_members -list POOL` is stubbed"
    }
    if {[lindex $args 1] ne $::h::pool} {
        error "harness: active_members of unknown pool [lindex $args 1]"
    }
    set out {}
    foreach m $::h::members {
        if {[lindex $m 3]} {
            lappend out [list [lindex $m 0] [lindex $m 1]]
        }
    }
    return $out
}

proc ::LB::server {args} {
    if {$args eq "pool"} {
        return $::h::pool
    }
    return ""
}

proc ::LB::status {args} {
    # LB::status pool POOL member ADDR PORT
    if {[llength $args] != 5 || [lindex $args 0] ne "pool" || [lindex $args 2] ne "member"} {
        error "harness: LB::status $args is not stubbed"
    }
    foreach m $::h::members {
        if {[lindex $m 0] eq [lindex $args 3] && [lindex $m 1] eq [lindex $args 4]} {
            return [lindex $m 2]
        }
    }
    error "harness: no member [lindex $args 3] [lindex $args 4] in [lindex $args 1]"
}

proc ::LB::reselect {args} {
    set ::h::reselect [concat [list LB::reselect] $args]
}

proc ::HTTP::respond {status args} {
    # HTTP::respond STATUS ?content BODY? ?noserver? ?NAME VALUE ...?
    if {[llength $::h::responded]} {
        error "harness: HTTP::respond called twice"
    }
    set content ""
    set headers {}
    for {set i 0} {$i < [llength $args]} {incr i} {
        set a [lindex $args $i]
        if {$a eq "content"} {
            incr i
            set content [lindex $args $i]
        } elseif {$a eq "noserver"} {
        } else {
            incr i
            if {$i >= [llength $args]} {
                error "harness: HTTP::respond header $a has no value"
            }
            lappend headers $a [lindex $args $i]
        }
    }
    set ::h::responded [list $status $headers $content]
}

proc ::HTTP::status {args} {
    if {$::h::response eq ""} {
        error "harness: HTTP::status outside HTTP_RESPONSE"
    }
    return $::h::response
}

proc ::HTTP::header {args} {
    # HTTP::header ?value? NAME: only the answer's Content-Type is known.
    if {$::h::response eq ""} {
        error "harness: HTTP::header outside HTTP_RESPONSE"
    }
    if {[string equal -nocase [lindex $args end] "Content-Type"]} {
        return $::h::content_type
    }
    return ""
}

proc ::HTTP::collect {args} {
    if {$::h::response eq ""} {
        error "harness: HTTP::collect outside HTTP_RESPONSE (requests are not collected)"
    }
    if {[llength $args] != 1 || ![string is integer -strict [lindex $args 0]]} {
        error "harness: HTTP::collect needs a length here (without one the response stalls)"
    }
    set ::h::collect [lindex $args 0]
}

proc ::HTTP::path {args} { return [lindex [split $::h::path "?"] 0] }
proc ::HTTP::uri {args} { return $::h::path }
proc ::HTTP::method {args} { return "POST" }
proc ::HTTP::host {args} { return "llm.example.com" }
proc ::IP::client_addr {args} { return "192.0.2.50" }

# `clock clicks -milliseconds` runs -response-after ahead once the server
# "answers"; everything else is Tcl's own clock.
rename clock ::h::tcl_clock
proc clock {args} {
    if {$args eq "clicks -milliseconds"} {
        return [expr {[::h::tcl_clock clicks -milliseconds] + $::h::skew_ms}]
    }
    return [eval [list ::h::tcl_clock] $args]
}

# ---------------------------------------------------------------- sideband

# Split sideband options (-name value, flags in $flags) from positional args.
proc ::h::options {argv flags} {
    array set opts {}
    set rest {}
    for {set i 0} {$i < [llength $argv]} {incr i} {
        set a [lindex $argv $i]
        if {[lsearch -exact $flags $a] >= 0} {
            set opts($a) 1
        } elseif {[string match -* $a] && $i + 1 < [llength $argv]} {
            incr i
            set opts($a) [lindex $argv $i]
        } else {
            lappend rest $a
        }
    }
    return [list [array get opts] $rest]
}

# Wait until $chan is readable/writable or $ms pass; 1 when it is ready.
proc ::h::wait_for {chan what ms} {
    set ::h::wake 0
    fileevent $chan $what {set ::h::wake 1}
    set timer [after [expr {$ms > 0 ? $ms : 0}] {set ::h::wake 2}]
    vwait ::h::wake
    after cancel $timer
    fileevent $chan $what {}
    return [expr {$::h::wake == 1}]
}

proc connect {args} {
    foreach {optlist rest} [::h::options $args {}] break
    array set opts $optlist
    set dest [lindex $rest 0]
    set timeout [expr {[info exists opts(-timeout)] ? $opts(-timeout) : 30000}]
    if {[info exists opts(-status)]} {
        upvar 1 $opts(-status) status
    }
    # "ip:port" for IPv4, "addr.port" for IPv6 (BIG-IP sideband syntax).
    if {[regexp {^([0-9.]+):([0-9]+)$} $dest -> host port]} {
    } elseif {[regexp {^([0-9A-Fa-f:]+)\.([0-9]+)$} $dest -> host port]} {
    } else {
        set status "failed"
        return ""
    }
    if {[catch {socket -async $host $port} chan]} {
        set status "failed"
        return ""
    }
    fconfigure $chan -blocking 0 -translation binary -buffering none
    if {![::h::wait_for $chan writable $timeout]} {
        close $chan
        set status "timeout"
        return ""
    }
    if {[fconfigure $chan -error] ne ""} {
        close $chan
        set status "failed"
        return ""
    }
    set id "sb[incr ::h::next_conn]"
    set ::h::conns($id) $chan
    set status "connected"
    return $id
}

proc send {args} {
    foreach {optlist rest} [::h::options $args {}] break
    array set opts $optlist
    if {[info exists opts(-status)]} {
        upvar 1 $opts(-status) status
    }
    foreach {id data} $rest break
    if {![info exists ::h::conns($id)]} {
        error "harness: send on unknown connection $id"
    }
    if {[catch {puts -nonewline $::h::conns($id) $data; flush $::h::conns($id)}]} {
        set status "closed"
        return 0
    }
    puts stderr "harness: sent [string length $data] bytes"
    set status "sent"
    return [string length $data]
}

proc recv {args} {
    # recv ?-eol? ?-peek? ?-timeout MS? ?-status VAR? ?NCHARS? CONN ?VAR?
    foreach {optlist rest} [::h::options $args {-eol -peek}] break
    array set opts $optlist
    if {[info exists opts(-status)]} {
        upvar 1 $opts(-status) status
    }
    if {[llength $rest] >= 2 && [string is integer -strict [lindex $rest 0]]} {
        set rest [lrange $rest 1 end]
    }
    set id [lindex $rest 0]
    if {![info exists ::h::conns($id)]} {
        error "harness: recv on unknown connection $id"
    }
    set chan $::h::conns($id)
    set timeout [expr {[info exists opts(-timeout)] ? $opts(-timeout) : 0}]
    set data ""
    if {[eof $chan]} {
        set status "closed"
    } elseif {![::h::wait_for $chan readable $timeout]} {
        set status "timeout"
    } else {
        if {[catch {read $chan} data]} {
            set data ""
            set status "failed"
        } elseif {[eof $chan]} {
            set status "closed"
        } else {
            set status "received"
        }
    }
    if {[llength $rest] >= 2} {
        upvar 1 [lindex $rest 1] out
        set out $data
        return [string length $data]
    }
    return $data
}

# Sideband `close CONN` shadows Tcl's close; the harness's own channels still
# reach the real one.
rename close ::h::tcl_close
proc close {chan args} {
    if {[info exists ::h::conns($chan)]} {
        ::h::tcl_close $::h::conns($chan)
        unset ::h::conns($chan)
        return
    }
    return [eval [list ::h::tcl_close $chan] $args]
}

# ---------------------------------------------------------------- main

proc ::h::member_spec {text} {
    set m [string trim $text]
    if {[llength $m] < 2 || [llength $m] > 4} {
        ::h::usage "bad member '$text': want \"ADDR PORT ?STATUS? ?ACTIVE?\""
    }
    set status [expr {[llength $m] >= 3 ? [lindex $m 2] : "up"}]
    set active [expr {[llength $m] >= 4 ? [lindex $m 3] : 1}]
    return [list [lindex $m 0] [lindex $m 1] $status $active]
}

proc ::h::main {argv} {
    set irule ""
    if {[info exists ::env(LLMSCHED_API)]} {
        lappend ::h::overrides llmsched_api $::env(LLMSCHED_API)
    }
    if {[info exists ::env(LLMSCHED_POOL)]} {
        set ::h::pool $::env(LLMSCHED_POOL)
    }
    if {[info exists ::env(LLMSCHED_MEMBERS)]} {
        foreach m [split $::env(LLMSCHED_MEMBERS) ";"] {
            if {[string trim $m] ne ""} {
                lappend ::h::members [::h::member_spec $m]
            }
        }
    }
    for {set i 0} {$i < [llength $argv]} {incr i} {
        set a [lindex $argv $i]
        set v [lindex $argv [expr {$i + 1}]]
        switch -- $a {
            -api { lappend ::h::overrides llmsched_api $v; incr i }
            -pool { set ::h::pool $v; incr i }
            -member { lappend ::h::members [::h::member_spec $v]; incr i }
            -connect-timeout { lappend ::h::overrides llmsched_connect_timeout_ms $v; incr i }
            -timeout { lappend ::h::overrides llmsched_timeout_ms $v; incr i }
            -debug { lappend ::h::overrides llmsched_debug $v; incr i }
            -path { set ::h::path $v; incr i }
            -lb-failed { set ::h::lb_failed $v; incr i }
            -response { set ::h::response_status $v; incr i }
            -response-after { set ::h::response_after $v; incr i }
            -response-api { set ::h::response_api $v; incr i }
            -content-type { set ::h::content_type $v; incr i }
            -first-byte-after { set ::h::first_byte_after $v; incr i }
            -set {
                lappend ::h::overrides $v [lindex $argv [expr {$i + 2}]]
                incr i 2
            }
            default {
                if {[string match -* $a] || $irule ne ""} {
                    ::h::usage "unexpected argument '$a'"
                }
                set irule $a
            }
        }
    }
    if {$irule eq ""} {
        ::h::usage "no iRule file given"
    }
    if {[catch {source $irule} err]} {
        puts "error: loading $irule: $err"
        exit 1
    }
    puts stderr "harness: events [join $::h::order { }]"
    set code 0
    foreach event {RULE_INIT CLIENT_ACCEPTED HTTP_REQUEST LB_FAILED HTTP_REQUEST_SEND
                   HTTP_RESPONSE HTTP_RESPONSE_DATA} {
        if {$event eq "LB_FAILED" && !$::h::lb_failed} {
            continue
        }
        if {$event eq "HTTP_REQUEST_SEND" || $event eq "HTTP_RESPONSE"} {
            # Only a request BIG-IP sent to a server gets a server's answer.
            if {![info exists ::h::response_status] || [llength $::h::responded]
                    || $::h::decision eq "none"} {
                continue
            }
        }
        if {$event eq "HTTP_RESPONSE"} {
            set ::h::skew_ms $::h::response_after
            set ::h::response $::h::response_status
            if {$::h::response_api ne ""} {
                set ::static::llmsched_api $::h::response_api
            }
            lappend ::h::fired "http_response $::h::response"
        }
        if {$event eq "HTTP_RESPONSE_DATA"} {
            # Only after HTTP_RESPONSE collected the body.
            if {$::h::collect eq ""} {
                continue
            }
            set ::h::skew_ms $::h::first_byte_after
            lappend ::h::fired "http_response_data $::h::collect"
        }
        if {![info exists ::h::events($event)]} {
            continue
        }
        # Each event body runs at global level, so variables persist from one
        # event to the next like an iRule's per-connection variables.
        set rc [catch {uplevel #0 $::h::events($event)} err]
        if {$rc == 1} {
            puts "error: $event: $err"
            puts stderr $::errorInfo
            set code 1
            break
        }
        if {$event eq "RULE_INIT"} {
            foreach {name value} $::h::overrides {
                set ::static::$name $value
            }
        }
    }
    if {$code == 0} {
        puts $::h::decision
        if {$::h::lb_failed} {
            puts $::h::reselect
        }
        if {[llength $::h::responded]} {
            foreach {status headers content} $::h::responded break
            puts "respond $status"
            foreach {name value} $headers {
                puts "respond-header $name $value"
            }
            puts "respond-body $content"
        }
        foreach line $::h::fired {
            puts $line
        }
    }
    puts stderr "harness: sideband_open=[array size ::h::conns]"
    exit $code
}

::h::main $argv
