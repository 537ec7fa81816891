// eval.h: placeholder
#pragma once
