# Learning curves from a metrics CSV written by the examples (epoch,train_loss,train_acc,val_loss,
# val_acc,lr,seconds):
#   gnuplot -e "csv='runs/fashion_mnist.csv'; out='runs/curves.png'" examples/plot_curves.gp
if (!exists("csv")) csv = 'runs/fashion_mnist.csv'
if (!exists("out")) out = 'runs/curves.png'

set datafile separator ','
set terminal pngcairo size 1100,420 font 'Sans,10'
set output out
set multiplot layout 1,2 title 'nabla: '.csv noenhanced

set title 'loss (cross-entropy)'
set xlabel 'epoch'
set grid
set key top right
plot csv using 1:2 skip 1 with linespoints pt 7 ps 0.5 title 'train', \
     csv using 1:4 skip 1 with linespoints pt 7 ps 0.5 title 'validation'

set title 'accuracy (%)'
set key bottom right
plot csv using 1:($3*100) skip 1 with linespoints pt 7 ps 0.5 title 'train', \
     csv using 1:($5*100) skip 1 with linespoints pt 7 ps 0.5 title 'validation'

unset multiplot
