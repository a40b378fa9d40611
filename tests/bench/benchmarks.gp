# Handshakes per second of one core, m2mpsk against the raw baselines;
# called by report.py with datafile and outfile set.
set terminal pngcairo size 1100,520 font "sans,10"
set output outfile
set title "Full (D)TLS 1.2 PSK handshakes per CPU second (higher is better)"
set style data histogram
set style histogram cluster gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "handshakes / s"
set grid ytics
set key top right
set xtics font ",9"
set yrange [0:*]
plot datafile using 2:xtic(1) title "m2mpsk (BoringSSL backend)" lc rgb "#1f77b4", \
     ''       using 3 title "raw BoringSSL" lc rgb "#aaaaaa", \
     ''       using 4 title "raw OpenSSL 3" lc rgb "#d62728"
