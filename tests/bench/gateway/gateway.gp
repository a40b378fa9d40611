# The gateway benchmark: four panels, one bar per contender (median, with
# the min-max of the repetitions); called by report.py with datafile and
# outfile set. Columns: name, then median/min/max of associations per core,
# requests per core, p99 added (µs), bytes per idle association.
set terminal pngcairo size 1300,420 font "sans,10"
set output outfile
set style data histogram
set style histogram errorbars gap 1 lw 1
set style fill solid 0.85 border -1
set boxwidth 0.8
set grid ytics
set key off
set yrange [0:*]
set xtics font ",9"
set multiplot layout 1,4 title "Gateway, stunnel and the backend reached directly (same backend, same client, one run)"
set title "new associations / s per server core\n(higher is better)"
plot datafile using 2:3:4:xtic(1) lc rgb "#1f77b4"
set title "requests / s per server core, keep-alive\n(higher is better)"
plot datafile using 5:6:7:xtic(1) lc rgb "#2ca02c"
set title "p99 latency added over direct, µs\n(one request at a time; lower is better)"
set yrange [*:*]
plot datafile using 8:9:10:xtic(1) lc rgb "#ff7f0e"
set title "resident bytes per idle association\n(lower is better)"
set yrange [0:*]
plot datafile using 11:12:13:xtic(1) lc rgb "#d62728"
unset multiplot
