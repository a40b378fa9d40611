module m2mpsk.org/m2mpsk

go 1.19
